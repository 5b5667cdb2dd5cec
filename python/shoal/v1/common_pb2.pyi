from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_F32: _ClassVar[Dtype]
    DTYPE_F16: _ClassVar[Dtype]
    DTYPE_BF16: _ClassVar[Dtype]
    DTYPE_Q8: _ClassVar[Dtype]
    DTYPE_TOPK: _ClassVar[Dtype]
DTYPE_UNSPECIFIED: Dtype
DTYPE_F32: Dtype
DTYPE_F16: Dtype
DTYPE_BF16: Dtype
DTYPE_Q8: Dtype
DTYPE_TOPK: Dtype

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: Dtype
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Parameters(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("kind", "hidden", "forest", "gbdt", "denoiser", "external")
    KIND_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    FOREST_FIELD_NUMBER: _ClassVar[int]
    GBDT_FIELD_NUMBER: _ClassVar[int]
    DENOISER_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    hidden: _containers.RepeatedScalarFieldContainer[int]
    forest: ForestParams
    gbdt: GbdtParams
    denoiser: DenoiserParams
    external: ExternalParams
    def __init__(self, kind: _Optional[str] = ..., hidden: _Optional[_Iterable[int]] = ..., forest: _Optional[_Union[ForestParams, _Mapping]] = ..., gbdt: _Optional[_Union[GbdtParams, _Mapping]] = ..., denoiser: _Optional[_Union[DenoiserParams, _Mapping]] = ..., external: _Optional[_Union[ExternalParams, _Mapping]] = ...) -> None: ...

class ExternalParams(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    def __init__(self, tensors: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ...) -> None: ...

class DenoiserParams(_message.Message):
    __slots__ = ("embed_dim", "steps", "schedule", "beta_start", "beta_end", "s")
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    BETA_START_FIELD_NUMBER: _ClassVar[int]
    BETA_END_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    embed_dim: int
    steps: int
    schedule: str
    beta_start: float
    beta_end: float
    s: float
    def __init__(self, embed_dim: _Optional[int] = ..., steps: _Optional[int] = ..., schedule: _Optional[str] = ..., beta_start: _Optional[float] = ..., beta_end: _Optional[float] = ..., s: _Optional[float] = ...) -> None: ...

class GbdtParams(_message.Message):
    __slots__ = ("max_depth", "max_bins", "learning_rate", "gamma", "min_child_weight", "sketch_size")
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_BINS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    LAMBDA_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    MIN_CHILD_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SKETCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    max_depth: int
    max_bins: int
    learning_rate: float
    gamma: float
    min_child_weight: float
    sketch_size: int
    def __init__(self, max_depth: _Optional[int] = ..., max_bins: _Optional[int] = ..., learning_rate: _Optional[float] = ..., gamma: _Optional[float] = ..., min_child_weight: _Optional[float] = ..., sketch_size: _Optional[int] = ..., **kwargs) -> None: ...

class ForestParams(_message.Message):
    __slots__ = ("trees_per_round", "max_depth", "min_samples_split", "min_samples_leaf", "max_features", "max_trees")
    TREES_PER_ROUND_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_SPLIT_FIELD_NUMBER: _ClassVar[int]
    MIN_SAMPLES_LEAF_FIELD_NUMBER: _ClassVar[int]
    MAX_FEATURES_FIELD_NUMBER: _ClassVar[int]
    MAX_TREES_FIELD_NUMBER: _ClassVar[int]
    trees_per_round: int
    max_depth: int
    min_samples_split: int
    min_samples_leaf: int
    max_features: float
    max_trees: int
    def __init__(self, trees_per_round: _Optional[int] = ..., max_depth: _Optional[int] = ..., min_samples_split: _Optional[int] = ..., min_samples_leaf: _Optional[int] = ..., max_features: _Optional[float] = ..., max_trees: _Optional[int] = ...) -> None: ...

class LocalTraining(_message.Message):
    __slots__ = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "proximal_mu")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    proximal_mu: float
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., proximal_mu: _Optional[float] = ...) -> None: ...
