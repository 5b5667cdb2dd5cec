from shoal.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_UNSPECIFIED: _ClassVar[JobStatus]
    JOB_STATUS_QUEUED: _ClassVar[JobStatus]
    JOB_STATUS_RUNNING: _ClassVar[JobStatus]
    JOB_STATUS_FINISHED: _ClassVar[JobStatus]
    JOB_STATUS_FAILED: _ClassVar[JobStatus]
    JOB_STATUS_CANCELLED: _ClassVar[JobStatus]
JOB_STATUS_UNSPECIFIED: JobStatus
JOB_STATUS_QUEUED: JobStatus
JOB_STATUS_RUNNING: JobStatus
JOB_STATUS_FINISHED: JobStatus
JOB_STATUS_FAILED: JobStatus
JOB_STATUS_CANCELLED: JobStatus

class SubmitRequest(_message.Message):
    __slots__ = ("spec", "format", "initial_parameters")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    INITIAL_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    spec: str
    format: str
    initial_parameters: _common_pb2.Parameters
    def __init__(self, spec: _Optional[str] = ..., format: _Optional[str] = ..., initial_parameters: _Optional[_Union[_common_pb2.Parameters, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobInfo]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobInfo, _Mapping]]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ResumeRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobInfo(_message.Message):
    __slots__ = ("job_id", "kind", "status", "rounds_total", "rounds_done", "error", "spec", "created_unix_ms", "last_round", "run_dir")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    RUN_DIR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    kind: str
    status: JobStatus
    rounds_total: int
    rounds_done: int
    error: str
    spec: str
    created_unix_ms: int
    last_round: RoundReport
    run_dir: str
    def __init__(self, job_id: _Optional[str] = ..., kind: _Optional[str] = ..., status: _Optional[_Union[JobStatus, str]] = ..., rounds_total: _Optional[int] = ..., rounds_done: _Optional[int] = ..., error: _Optional[str] = ..., spec: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., last_round: _Optional[_Union[RoundReport, _Mapping]] = ..., run_dir: _Optional[str] = ...) -> None: ...

class RoundReport(_message.Message):
    __slots__ = ("job_id", "round", "rounds_total", "clients", "clients_selected", "train_loss", "fed_loss", "fed_accuracy", "test_accuracy", "bytes_up", "bytes_down", "seconds", "rejected", "test_loss", "rejected_by", "quarantined", "late_by", "staleness")
    class RejectedByEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LateByEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CLIENTS_SELECTED_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    FED_LOSS_FIELD_NUMBER: _ClassVar[int]
    FED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    TEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BY_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    LATE_BY_FIELD_NUMBER: _ClassVar[int]
    STALENESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    rounds_total: int
    clients: int
    clients_selected: int
    train_loss: float
    fed_loss: float
    fed_accuracy: float
    test_accuracy: float
    bytes_up: int
    bytes_down: int
    seconds: float
    rejected: int
    test_loss: float
    rejected_by: _containers.ScalarMap[str, int]
    quarantined: _containers.RepeatedScalarFieldContainer[str]
    late_by: _containers.ScalarMap[str, int]
    staleness: float
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., rounds_total: _Optional[int] = ..., clients: _Optional[int] = ..., clients_selected: _Optional[int] = ..., train_loss: _Optional[float] = ..., fed_loss: _Optional[float] = ..., fed_accuracy: _Optional[float] = ..., test_accuracy: _Optional[float] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., seconds: _Optional[float] = ..., rejected: _Optional[int] = ..., test_loss: _Optional[float] = ..., rejected_by: _Optional[_Mapping[str, int]] = ..., quarantined: _Optional[_Iterable[str]] = ..., late_by: _Optional[_Mapping[str, int]] = ..., staleness: _Optional[float] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("round", "finished")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    round: RoundReport
    finished: JobInfo
    def __init__(self, round: _Optional[_Union[RoundReport, _Mapping]] = ..., finished: _Optional[_Union[JobInfo, _Mapping]] = ...) -> None: ...
