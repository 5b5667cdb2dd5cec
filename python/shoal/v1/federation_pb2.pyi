from shoal.v1 import common_pb2 as _common_pb2
from shoal.v1 import trees_pb2 as _trees_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_F16: _ClassVar[Compression]
    COMPRESSION_BF16: _ClassVar[Compression]
    COMPRESSION_INT8: _ClassVar[Compression]
    COMPRESSION_TOPK: _ClassVar[Compression]
COMPRESSION_NONE: Compression
COMPRESSION_F16: Compression
COMPRESSION_BF16: Compression
COMPRESSION_INT8: Compression
COMPRESSION_TOPK: Compression

class ClientMessage(_message.Message):
    __slots__ = ("hello", "result", "heartbeat", "chunk")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    result: TaskResult
    heartbeat: Heartbeat
    chunk: Chunk
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("welcome", "reject", "task", "heartbeat", "notice", "chunk")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    reject: Reject
    task: Task
    heartbeat: Heartbeat
    notice: Notice
    chunk: Chunk
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("total_bytes", "offset", "data")
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    total_bytes: int
    offset: int
    data: bytes
    def __init__(self, total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("protocol_version", "client_name", "token", "datasets", "model_kinds", "task_kinds", "max_message_bytes", "max_transfer_bytes")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    MODEL_KINDS_FIELD_NUMBER: _ClassVar[int]
    TASK_KINDS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TRANSFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_name: str
    token: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    model_kinds: _containers.RepeatedScalarFieldContainer[str]
    task_kinds: _containers.RepeatedScalarFieldContainer[str]
    max_message_bytes: int
    max_transfer_bytes: int
    def __init__(self, protocol_version: _Optional[int] = ..., client_name: _Optional[str] = ..., token: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ..., model_kinds: _Optional[_Iterable[str]] = ..., task_kinds: _Optional[_Iterable[str]] = ..., max_message_bytes: _Optional[int] = ..., max_transfer_bytes: _Optional[int] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "train_examples", "test_examples", "feature_names", "class_names")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TEST_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    train_examples: int
    test_examples: int
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., train_examples: _Optional[int] = ..., test_examples: _Optional[int] = ..., feature_names: _Optional[_Iterable[str]] = ..., class_names: _Optional[_Iterable[str]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("client_id", "protocol_version", "heartbeat_interval_ms", "max_transfer_bytes", "max_message_bytes")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_TRANSFER_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    protocol_version: int
    heartbeat_interval_ms: int
    max_transfer_bytes: int
    max_message_bytes: int
    def __init__(self, client_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., heartbeat_interval_ms: _Optional[int] = ..., max_transfer_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("reason", "coordinator_protocol_version")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    reason: str
    coordinator_protocol_version: int
    def __init__(self, reason: _Optional[str] = ..., coordinator_protocol_version: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("unix_ms",)
    UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    unix_ms: int
    def __init__(self, unix_ms: _Optional[int] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("job_id", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    message: str
    def __init__(self, job_id: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "job_id", "round", "dataset", "class_names", "model", "parameters", "deadline_unix_ms", "seed", "fit", "evaluate", "sketch", "histogram", "get_parameters", "forest", "ensemble", "feature_view", "validation")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    GET_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FOREST_FIELD_NUMBER: _ClassVar[int]
    ENSEMBLE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VIEW_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    job_id: str
    round: int
    dataset: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    model: _common_pb2.ModelSpec
    parameters: _common_pb2.Parameters
    deadline_unix_ms: int
    seed: int
    fit: FitTask
    evaluate: EvaluateTask
    sketch: SketchTask
    histogram: HistogramTask
    get_parameters: ParametersTask
    forest: _trees_pb2.Forest
    ensemble: _trees_pb2.Ensemble
    feature_view: bytes
    validation: bool
    def __init__(self, task_id: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., dataset: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., parameters: _Optional[_Union[_common_pb2.Parameters, _Mapping]] = ..., deadline_unix_ms: _Optional[int] = ..., seed: _Optional[int] = ..., fit: _Optional[_Union[FitTask, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateTask, _Mapping]] = ..., sketch: _Optional[_Union[SketchTask, _Mapping]] = ..., histogram: _Optional[_Union[HistogramTask, _Mapping]] = ..., get_parameters: _Optional[_Union[ParametersTask, _Mapping]] = ..., forest: _Optional[_Union[_trees_pb2.Forest, _Mapping]] = ..., ensemble: _Optional[_Union[_trees_pb2.Ensemble, _Mapping]] = ..., feature_view: _Optional[bytes] = ..., validation: _Optional[bool] = ...) -> None: ...

class FitTask(_message.Message):
    __slots__ = ("local", "control", "compression", "topk_fraction")
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    local: _common_pb2.LocalTraining
    control: _common_pb2.Parameters
    compression: Compression
    topk_fraction: float
    def __init__(self, local: _Optional[_Union[_common_pb2.LocalTraining, _Mapping]] = ..., control: _Optional[_Union[_common_pb2.Parameters, _Mapping]] = ..., compression: _Optional[_Union[Compression, str]] = ..., topk_fraction: _Optional[float] = ...) -> None: ...

class EvaluateTask(_message.Message):
    __slots__ = ("personalize_epochs", "local")
    PERSONALIZE_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_FIELD_NUMBER: _ClassVar[int]
    personalize_epochs: int
    local: _common_pb2.LocalTraining
    def __init__(self, personalize_epochs: _Optional[int] = ..., local: _Optional[_Union[_common_pb2.LocalTraining, _Mapping]] = ...) -> None: ...

class SketchTask(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParametersTask(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ParametersResult(_message.Message):
    __slots__ = ("parameters",)
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    parameters: _common_pb2.Parameters
    def __init__(self, parameters: _Optional[_Union[_common_pb2.Parameters, _Mapping]] = ...) -> None: ...

class HistogramTask(_message.Message):
    __slots__ = ("output", "partial_tree", "nodes", "first_level")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_TREE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    FIRST_LEVEL_FIELD_NUMBER: _ClassVar[int]
    output: int
    partial_tree: _trees_pb2.BoostTree
    nodes: _containers.RepeatedScalarFieldContainer[int]
    first_level: bool
    def __init__(self, output: _Optional[int] = ..., partial_tree: _Optional[_Union[_trees_pb2.BoostTree, _Mapping]] = ..., nodes: _Optional[_Iterable[int]] = ..., first_level: _Optional[bool] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "job_id", "round", "fit", "evaluate", "error", "sketch", "histogram", "parameters")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    job_id: str
    round: int
    fit: FitResult
    evaluate: EvaluateResult
    error: str
    sketch: SketchResult
    histogram: HistogramResult
    parameters: ParametersResult
    def __init__(self, task_id: _Optional[str] = ..., job_id: _Optional[str] = ..., round: _Optional[int] = ..., fit: _Optional[_Union[FitResult, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateResult, _Mapping]] = ..., error: _Optional[str] = ..., sketch: _Optional[_Union[SketchResult, _Mapping]] = ..., histogram: _Optional[_Union[HistogramResult, _Mapping]] = ..., parameters: _Optional[_Union[ParametersResult, _Mapping]] = ...) -> None: ...

class SketchResult(_message.Message):
    __slots__ = ("sketch", "num_examples")
    SKETCH_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    sketch: _trees_pb2.QuantileSketch
    num_examples: int
    def __init__(self, sketch: _Optional[_Union[_trees_pb2.QuantileSketch, _Mapping]] = ..., num_examples: _Optional[int] = ...) -> None: ...

class HistogramResult(_message.Message):
    __slots__ = ("histograms", "num_examples", "train_loss")
    HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    histograms: _containers.RepeatedCompositeFieldContainer[_trees_pb2.NodeHistogram]
    num_examples: int
    train_loss: float
    def __init__(self, histograms: _Optional[_Iterable[_Union[_trees_pb2.NodeHistogram, _Mapping]]] = ..., num_examples: _Optional[int] = ..., train_loss: _Optional[float] = ...) -> None: ...

class FitResult(_message.Message):
    __slots__ = ("parameters", "num_examples", "train_loss", "control_delta", "trees", "delta")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    CONTROL_DELTA_FIELD_NUMBER: _ClassVar[int]
    TREES_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    parameters: _common_pb2.Parameters
    num_examples: int
    train_loss: float
    control_delta: _common_pb2.Parameters
    trees: _trees_pb2.Forest
    delta: bool
    def __init__(self, parameters: _Optional[_Union[_common_pb2.Parameters, _Mapping]] = ..., num_examples: _Optional[int] = ..., train_loss: _Optional[float] = ..., control_delta: _Optional[_Union[_common_pb2.Parameters, _Mapping]] = ..., trees: _Optional[_Union[_trees_pb2.Forest, _Mapping]] = ..., delta: _Optional[bool] = ...) -> None: ...

class EvaluateResult(_message.Message):
    __slots__ = ("num_examples", "loss", "accuracy", "classes_present", "personalized_accuracy")
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CLASSES_PRESENT_FIELD_NUMBER: _ClassVar[int]
    PERSONALIZED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    num_examples: int
    loss: float
    accuracy: float
    classes_present: int
    personalized_accuracy: float
    def __init__(self, num_examples: _Optional[int] = ..., loss: _Optional[float] = ..., accuracy: _Optional[float] = ..., classes_present: _Optional[int] = ..., personalized_accuracy: _Optional[float] = ...) -> None: ...
