from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Forest(_message.Message):
    __slots__ = ("n_features", "n_classes", "trees")
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    N_CLASSES_FIELD_NUMBER: _ClassVar[int]
    TREES_FIELD_NUMBER: _ClassVar[int]
    n_features: int
    n_classes: int
    trees: _containers.RepeatedCompositeFieldContainer[ForestTree]
    def __init__(self, n_features: _Optional[int] = ..., n_classes: _Optional[int] = ..., trees: _Optional[_Iterable[_Union[ForestTree, _Mapping]]] = ...) -> None: ...

class ForestTree(_message.Message):
    __slots__ = ("weight", "round", "nodes")
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    weight: float
    round: int
    nodes: _containers.RepeatedCompositeFieldContainer[ForestNode]
    def __init__(self, weight: _Optional[float] = ..., round: _Optional[int] = ..., nodes: _Optional[_Iterable[_Union[ForestNode, _Mapping]]] = ...) -> None: ...

class ForestNode(_message.Message):
    __slots__ = ("split", "leaf")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    split: ForestSplit
    leaf: ForestLeaf
    def __init__(self, split: _Optional[_Union[ForestSplit, _Mapping]] = ..., leaf: _Optional[_Union[ForestLeaf, _Mapping]] = ...) -> None: ...

class ForestSplit(_message.Message):
    __slots__ = ("feature", "threshold", "left", "right")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    feature: int
    threshold: float
    left: int
    right: int
    def __init__(self, feature: _Optional[int] = ..., threshold: _Optional[float] = ..., left: _Optional[int] = ..., right: _Optional[int] = ...) -> None: ...

class ForestLeaf(_message.Message):
    __slots__ = ("proba",)
    PROBA_FIELD_NUMBER: _ClassVar[int]
    proba: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, proba: _Optional[_Iterable[float]] = ...) -> None: ...

class Ensemble(_message.Message):
    __slots__ = ("n_features", "n_classes", "edges", "base_score", "rounds")
    N_FEATURES_FIELD_NUMBER: _ClassVar[int]
    N_CLASSES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    BASE_SCORE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    n_features: int
    n_classes: int
    edges: _containers.RepeatedCompositeFieldContainer[FeatureEdges]
    base_score: _containers.RepeatedScalarFieldContainer[float]
    rounds: _containers.RepeatedCompositeFieldContainer[BoostRound]
    def __init__(self, n_features: _Optional[int] = ..., n_classes: _Optional[int] = ..., edges: _Optional[_Iterable[_Union[FeatureEdges, _Mapping]]] = ..., base_score: _Optional[_Iterable[float]] = ..., rounds: _Optional[_Iterable[_Union[BoostRound, _Mapping]]] = ...) -> None: ...

class FeatureEdges(_message.Message):
    __slots__ = ("edges",)
    EDGES_FIELD_NUMBER: _ClassVar[int]
    edges: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, edges: _Optional[_Iterable[float]] = ...) -> None: ...

class BoostRound(_message.Message):
    __slots__ = ("trees",)
    TREES_FIELD_NUMBER: _ClassVar[int]
    trees: _containers.RepeatedCompositeFieldContainer[BoostTree]
    def __init__(self, trees: _Optional[_Iterable[_Union[BoostTree, _Mapping]]] = ...) -> None: ...

class BoostTree(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[BoostNode]
    def __init__(self, nodes: _Optional[_Iterable[_Union[BoostNode, _Mapping]]] = ...) -> None: ...

class BoostNode(_message.Message):
    __slots__ = ("split", "leaf")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    LEAF_FIELD_NUMBER: _ClassVar[int]
    split: BoostSplit
    leaf: BoostLeaf
    def __init__(self, split: _Optional[_Union[BoostSplit, _Mapping]] = ..., leaf: _Optional[_Union[BoostLeaf, _Mapping]] = ...) -> None: ...

class BoostSplit(_message.Message):
    __slots__ = ("feature", "bin", "threshold", "left", "right")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    BIN_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    feature: int
    bin: int
    threshold: float
    left: int
    right: int
    def __init__(self, feature: _Optional[int] = ..., bin: _Optional[int] = ..., threshold: _Optional[float] = ..., left: _Optional[int] = ..., right: _Optional[int] = ...) -> None: ...

class BoostLeaf(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: float
    def __init__(self, value: _Optional[float] = ...) -> None: ...

class QuantileSketch(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedCompositeFieldContainer[FeatureSketch]
    def __init__(self, features: _Optional[_Iterable[_Union[FeatureSketch, _Mapping]]] = ...) -> None: ...

class FeatureSketch(_message.Message):
    __slots__ = ("values", "weights")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    weights: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ..., weights: _Optional[_Iterable[float]] = ...) -> None: ...

class NodeHistogram(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...
