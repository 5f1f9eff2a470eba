import gobucket_py


def test_all_is_the_public_surface() -> None:
    assert sorted(gobucket_py.__all__) == sorted(
        [
            "BucketClosedError", "BucketConfig", "BucketError", "BucketFullError",
            "ClusterFullError", "DrainOutcome", "DrainResult", "DuplicateTaskError", "Executor",
            "FillResult", "FunctionExecutor", "GobucketError", "GroupClient", "GroupConfig",
            "GroupState",
            "Handler", "HttpTransport", "Keyring", "MemberState", "MemoryNetwork", "PeerError",
            "PeerInfo", "PeerUnavailableError", "PlacementUnknownError", "ProtocolError", "Task",
            "TaskBucket", "TaskBucketGroup", "TaskInfo", "TaskState", "TaskType", "Transport",
            "UnknownBucketError", "__version__",
        ]
    )
    for name in gobucket_py.__all__:
        obj = getattr(gobucket_py, name)
        if isinstance(obj, type):
            assert obj.__doc__, f"{name} has no docstring"


def test_error_tree() -> None:
    for name in ("BucketFullError", "DuplicateTaskError", "BucketClosedError",
                 "UnknownBucketError", "ClusterFullError", "PeerError", "PeerUnavailableError",
                 "PlacementUnknownError", "ProtocolError"):
        assert issubclass(getattr(gobucket_py, name), gobucket_py.GobucketError)
