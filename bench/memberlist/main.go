// Command memberlist-node is a minimal HashiCorp memberlist node used as the
// baseline in bench/memberlist_baseline.py. It is built offline in GOPATH mode
// against Debian's golang-github-hashicorp-memberlist-dev package.
//
// It runs one node with memberlist.DefaultLANConfig(), bound to -bind:-port,
// joins -join (comma-separated host:port seeds) and prints one line per event
// on stdout:
//
//	READY <unix_nanos> <name> <members>
//	EVENT <unix_nanos> join|leave|update <node-name>
//	STATS <unix_nanos> <name> udp_pkts=<n> udp_bytes=<n> tcp_conns=<n> tcp_bytes=<n> members=<n>
//
// memberlist's NotifyLeave fires both for graceful leaves and for nodes it
// declares dead after the suspicion timeout, so "leave" is the detection time.
//
// Traffic is counted by wrapping the memberlist Transport: every WriteTo is
// one UDP datagram (its payload bytes, i.e. without IP/UDP headers; one
// datagram may carry a compound of several memberlist messages), every
// outbound DialTimeout is one TCP stream, and every byte written on a TCP
// stream (dialed or accepted: push/pull replies and fallback probes) counts as
// tcp_bytes. STATS is printed on SIGUSR1 and, with -stats-every > 0,
// periodically.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/memberlist"
)

var outMu sync.Mutex

func emit(format string, args ...interface{}) {
	line := fmt.Sprintf(format, args...)
	outMu.Lock()
	os.Stdout.WriteString(line + "\n")
	outMu.Unlock()
}

func now() int64 { return time.Now().UnixNano() }

// counters of what this node sends.
type counters struct {
	udpPkts  uint64
	udpBytes uint64
	tcpConns uint64
	tcpBytes uint64
}

// countingConn counts bytes written on a TCP stream.
type countingConn struct {
	net.Conn
	c *counters
}

func (cc *countingConn) Write(b []byte) (int, error) {
	n, err := cc.Conn.Write(b)
	atomic.AddUint64(&cc.c.tcpBytes, uint64(n))
	return n, err
}

// countingTransport wraps a memberlist.Transport and counts what is sent.
type countingTransport struct {
	memberlist.Transport
	c        *counters
	streamCh chan net.Conn
}

func newCountingTransport(t memberlist.Transport, c *counters) *countingTransport {
	ct := &countingTransport{Transport: t, c: c, streamCh: make(chan net.Conn)}
	go func() {
		for conn := range t.StreamCh() {
			ct.streamCh <- &countingConn{Conn: conn, c: c}
		}
	}()
	return ct
}

func (ct *countingTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	ts, err := ct.Transport.WriteTo(b, addr)
	if err == nil {
		atomic.AddUint64(&ct.c.udpPkts, 1)
		atomic.AddUint64(&ct.c.udpBytes, uint64(len(b)))
	}
	return ts, err
}

func (ct *countingTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	conn, err := ct.Transport.DialTimeout(addr, timeout)
	if err != nil {
		return nil, err
	}
	atomic.AddUint64(&ct.c.tcpConns, 1)
	return &countingConn{Conn: conn, c: ct.c}, nil
}

func (ct *countingTransport) StreamCh() <-chan net.Conn { return ct.streamCh }

type events struct{}

func (events) NotifyJoin(n *memberlist.Node)   { emit("EVENT %d join %s", now(), n.Name) }
func (events) NotifyLeave(n *memberlist.Node)  { emit("EVENT %d leave %s", now(), n.Name) }
func (events) NotifyUpdate(n *memberlist.Node) { emit("EVENT %d update %s", now(), n.Name) }

func main() {
	name := flag.String("name", "", "node name (required)")
	bind := flag.String("bind", "127.0.0.1", "bind and advertise address")
	port := flag.Int("port", 7946, "UDP and TCP port")
	join := flag.String("join", "", "comma-separated host:port seeds")
	statsEvery := flag.Duration("stats-every", 0, "print STATS periodically (0: only on SIGUSR1)")
	logFile := flag.String("log", "", "memberlist log file (default: discard)")
	flag.Parse()
	if *name == "" {
		fmt.Fprintln(os.Stderr, "-name is required")
		os.Exit(2)
	}

	var logOut io.Writer = io.Discard
	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, "log:", err)
			os.Exit(1)
		}
		defer f.Close()
		logOut = f
	}
	logger := log.New(logOut, "", log.LstdFlags|log.Lmicroseconds)

	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{*bind},
		BindPort:  *port,
		Logger:    logger,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "transport:", err)
		os.Exit(1)
	}
	c := &counters{}

	conf := memberlist.DefaultLANConfig()
	conf.Name = *name
	conf.BindAddr = *bind
	conf.BindPort = *port
	conf.AdvertiseAddr = *bind
	conf.AdvertisePort = *port
	conf.Transport = newCountingTransport(nt, c)
	conf.Events = events{}
	conf.Logger = logger

	ml, err := memberlist.Create(conf)
	if err != nil {
		fmt.Fprintln(os.Stderr, "create:", err)
		os.Exit(1)
	}
	if *join != "" {
		seeds := strings.Split(*join, ",")
		for {
			if _, err := ml.Join(seeds); err == nil {
				break
			} else {
				fmt.Fprintln(os.Stderr, "join:", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	emit("READY %d %s %d", now(), *name, ml.NumMembers())

	stats := func() {
		emit("STATS %d %s udp_pkts=%d udp_bytes=%d tcp_conns=%d tcp_bytes=%d members=%d",
			now(), *name,
			atomic.LoadUint64(&c.udpPkts), atomic.LoadUint64(&c.udpBytes),
			atomic.LoadUint64(&c.tcpConns), atomic.LoadUint64(&c.tcpBytes),
			ml.NumMembers())
	}
	if *statsEvery > 0 {
		go func() {
			for range time.Tick(*statsEvery) {
				stats()
			}
		}()
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1, syscall.SIGTERM, syscall.SIGINT)
	for s := range sigs {
		if s == syscall.SIGUSR1 {
			stats()
			continue
		}
		_ = ml.Shutdown()
		return
	}
}
