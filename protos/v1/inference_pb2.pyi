from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CompressedTensor(_message.Message):
    __slots__ = ("codec", "codec_version", "shape", "data", "symbols_crc32")
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_CRC32_FIELD_NUMBER: _ClassVar[int]
    codec: str
    codec_version: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    symbols_crc32: int
    def __init__(self, codec: _Optional[str] = ..., codec_version: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., symbols_crc32: _Optional[int] = ...) -> None: ...

class InferRequest(_message.Message):
    __slots__ = ("request_id", "model", "version", "split", "level", "tensor", "top_k", "deadline_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    version: str
    split: str
    level: int
    tensor: CompressedTensor
    top_k: int
    deadline_ms: int
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., split: _Optional[str] = ..., level: _Optional[int] = ..., tensor: _Optional[_Union[CompressedTensor, _Mapping]] = ..., top_k: _Optional[int] = ..., deadline_ms: _Optional[int] = ...) -> None: ...

class ServerTimings(_message.Message):
    __slots__ = ("receive_ms", "decode_ms", "queue_ms", "tail_ms", "total_ms", "queue_delay_ms")
    RECEIVE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TAIL_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    receive_ms: float
    decode_ms: float
    queue_ms: float
    tail_ms: float
    total_ms: float
    queue_delay_ms: float
    def __init__(self, receive_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., tail_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., queue_delay_ms: _Optional[float] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class InferResponse(_message.Message):
    __slots__ = ("request_id", "model", "version", "classes", "scores", "timings", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    version: str
    classes: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    timings: ServerTimings
    error: ItemError
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., classes: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SplitInfo(_message.Message):
    __slots__ = ("name", "latent_shape", "levels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LATENT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    latent_shape: _containers.RepeatedScalarFieldContainer[int]
    levels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., latent_shape: _Optional[_Iterable[int]] = ..., levels: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "input_shape", "input_dtype", "num_classes", "splits", "offload")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    OFFLOAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    input_dtype: str
    num_classes: int
    splits: _containers.RepeatedCompositeFieldContainer[SplitInfo]
    offload: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., input_dtype: _Optional[str] = ..., num_classes: _Optional[int] = ..., splits: _Optional[_Iterable[_Union[SplitInfo, _Mapping]]] = ..., offload: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("bundle", "option", "data", "check", "deadline_ms", "top_k", "timings_every")
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    OPTION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_EVERY_FIELD_NUMBER: _ClassVar[int]
    bundle: int
    option: int
    data: bytes
    check: int
    deadline_ms: int
    top_k: int
    timings_every: int
    def __init__(self, bundle: _Optional[int] = ..., option: _Optional[int] = ..., data: _Optional[bytes] = ..., check: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., top_k: _Optional[int] = ..., timings_every: _Optional[int] = ...) -> None: ...

class RunReply(_message.Message):
    __slots__ = ("seq", "classes", "scores", "server_dms", "queue_dms", "timings", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SERVER_DMS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DMS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    classes: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    server_dms: int
    queue_dms: int
    timings: ServerTimings
    error: ItemError
    def __init__(self, seq: _Optional[int] = ..., classes: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., server_dms: _Optional[int] = ..., queue_dms: _Optional[int] = ..., timings: _Optional[_Union[ServerTimings, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class PingRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Load(_message.Message):
    __slots__ = ("queue_dms", "tail_dms")
    QUEUE_DMS_FIELD_NUMBER: _ClassVar[int]
    TAIL_DMS_FIELD_NUMBER: _ClassVar[int]
    queue_dms: int
    tail_dms: int
    def __init__(self, queue_dms: _Optional[int] = ..., tail_dms: _Optional[int] = ...) -> None: ...
