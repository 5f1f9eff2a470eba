import gobucket_py


def test_all_is_the_public_surface() -> None:
    assert sorted(gobucket_py.__all__) == sorted(
        [
            "BucketClosedError", "BucketConfig", "BucketError", "BucketFullError",
            "ClusterFullError", "Codec", "DrainOutcome", "DrainResult", "DuplicateTaskError",
            "Executor",
            "FillResult", "FunctionExecutor", "GobucketError", "GroupClient", "GroupConfig",
            "GroupState",
            "Handler", "HttpTransport", "Keyring", "MemberState", "MemoryNetwork",
            "NoBackupRoomError", "PeerError",
            "PeerInfo", "PeerUnavailableError", "PlacementUnknownError", "ProtocolError",
            "Serializer", "Task",
            "TaskBucket", "TaskBucketGroup", "TaskInfo", "TaskState", "TaskType", "TLSConfig",
            "Transport",
            "UnknownBucketError", "__version__", "serve_pages",
        ]
    )
    for name in gobucket_py.__all__:
        obj = getattr(gobucket_py, name)
        if isinstance(obj, type):
            assert obj.__doc__, f"{name} has no docstring"


def test_error_tree() -> None:
    for name in ("BucketFullError", "DuplicateTaskError", "BucketClosedError",
                 "UnknownBucketError", "ClusterFullError", "PeerError", "PeerUnavailableError",
                 "PlacementUnknownError", "ProtocolError", "NoBackupRoomError"):
        assert issubclass(getattr(gobucket_py, name), gobucket_py.GobucketError)
    assert issubclass(gobucket_py.NoBackupRoomError, gobucket_py.ClusterFullError)


def test_the_test_kit_surface() -> None:
    """gobucket_py.testing is public too (not in gobucket_py: it is for tests)."""
    import gobucket_py.testing as kit

    assert sorted(kit.__all__) == ["BucketsFactory", "Fault", "MemoryCluster"]
    cluster = kit.MemoryCluster
    assert cluster.__doc__
    for name in ("start", "close", "restart", "crash", "stop", "settle", "wait_for", "state",
                 "delay", "drop_replies", "partition", "stall", "resume", "heal"):
        assert getattr(cluster, name).__doc__, f"MemoryCluster.{name} has no docstring"
    network = gobucket_py.MemoryNetwork
    for name in ("transport", "down", "hang", "up", "crash", "delay", "drop_replies",
                 "partition", "stall", "resume", "heal", "faults"):
        assert not name.startswith("_") and getattr(network, name).__doc__, name
    assert kit.gobucket_cluster.__doc__  # the pytest fixture (pytest is installed here)
