from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_STORED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_DECODED: _ClassVar[ImageEncoding]
IMAGE_ENCODING_STORED: ImageEncoding
IMAGE_ENCODING_DECODED: ImageEncoding

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CameraFrames(_message.Message):
    __slots__ = ("camera", "codec", "height", "width", "channels", "frames", "pixels")
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    camera: str
    codec: str
    height: int
    width: int
    channels: int
    frames: _containers.RepeatedScalarFieldContainer[bytes]
    pixels: Tensor
    def __init__(self, camera: _Optional[str] = ..., codec: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ..., frames: _Optional[_Iterable[bytes]] = ..., pixels: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EpisodeRequest(_message.Message):
    __slots__ = ("position", "include_images", "image_encoding", "cameras")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    position: int
    include_images: bool
    image_encoding: ImageEncoding
    cameras: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, position: _Optional[int] = ..., include_images: _Optional[bool] = ..., image_encoding: _Optional[_Union[ImageEncoding, str]] = ..., cameras: _Optional[_Iterable[str]] = ...) -> None: ...

class MetaRequest(_message.Message):
    __slots__ = ("position",)
    POSITION_FIELD_NUMBER: _ClassVar[int]
    position: int
    def __init__(self, position: _Optional[int] = ...) -> None: ...

class WindowSpec(_message.Message):
    __slots__ = ("obs_horizon", "action_horizon", "pad", "kql_filter", "normalize")
    OBS_HORIZON_FIELD_NUMBER: _ClassVar[int]
    ACTION_HORIZON_FIELD_NUMBER: _ClassVar[int]
    PAD_FIELD_NUMBER: _ClassVar[int]
    KQL_FILTER_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    obs_horizon: int
    action_horizon: int
    pad: str
    kql_filter: str
    normalize: str
    def __init__(self, obs_horizon: _Optional[int] = ..., action_horizon: _Optional[int] = ..., pad: _Optional[str] = ..., kql_filter: _Optional[str] = ..., normalize: _Optional[str] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("batch_size", "mode", "offset", "seed", "include_images", "windows", "image_encoding", "cameras", "image_height", "image_width")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_IMAGES_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    mode: str
    offset: int
    seed: int
    include_images: bool
    windows: WindowSpec
    image_encoding: ImageEncoding
    cameras: _containers.RepeatedScalarFieldContainer[str]
    image_height: int
    image_width: int
    def __init__(self, batch_size: _Optional[int] = ..., mode: _Optional[str] = ..., offset: _Optional[int] = ..., seed: _Optional[int] = ..., include_images: _Optional[bool] = ..., windows: _Optional[_Union[WindowSpec, _Mapping]] = ..., image_encoding: _Optional[_Union[ImageEncoding, str]] = ..., cameras: _Optional[_Iterable[str]] = ..., image_height: _Optional[int] = ..., image_width: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("batch", "num_batches", "stride", "batches_per_message")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    BATCHES_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    batch: BatchRequest
    num_batches: int
    stride: int
    batches_per_message: int
    def __init__(self, batch: _Optional[_Union[BatchRequest, _Mapping]] = ..., num_batches: _Optional[int] = ..., stride: _Optional[int] = ..., batches_per_message: _Optional[int] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("kql", "limit", "include_metas")
    KQL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_METAS_FIELD_NUMBER: _ClassVar[int]
    kql: str
    limit: int
    include_metas: bool
    def __init__(self, kql: _Optional[str] = ..., limit: _Optional[int] = ..., include_metas: _Optional[bool] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EpisodeMeta(_message.Message):
    __slots__ = ("episode_id", "embodiment", "task", "num_frames", "fps", "action_dim", "has_success", "success", "has_reward", "total_reward", "state_dim", "fps_double", "total_reward_double", "extra_json")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    EMBODIMENT_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    ACTION_DIM_FIELD_NUMBER: _ClassVar[int]
    HAS_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    HAS_REWARD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REWARD_FIELD_NUMBER: _ClassVar[int]
    STATE_DIM_FIELD_NUMBER: _ClassVar[int]
    FPS_DOUBLE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REWARD_DOUBLE_FIELD_NUMBER: _ClassVar[int]
    EXTRA_JSON_FIELD_NUMBER: _ClassVar[int]
    episode_id: int
    embodiment: str
    task: str
    num_frames: int
    fps: float
    action_dim: int
    has_success: bool
    success: bool
    has_reward: bool
    total_reward: float
    state_dim: int
    fps_double: float
    total_reward_double: float
    extra_json: str
    def __init__(self, episode_id: _Optional[int] = ..., embodiment: _Optional[str] = ..., task: _Optional[str] = ..., num_frames: _Optional[int] = ..., fps: _Optional[float] = ..., action_dim: _Optional[int] = ..., has_success: _Optional[bool] = ..., success: _Optional[bool] = ..., has_reward: _Optional[bool] = ..., total_reward: _Optional[float] = ..., state_dim: _Optional[int] = ..., fps_double: _Optional[float] = ..., total_reward_double: _Optional[float] = ..., extra_json: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("timestep", "state", "action", "reward", "is_terminal", "images")
    TIMESTEP_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    IS_TERMINAL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    timestep: int
    state: _containers.RepeatedScalarFieldContainer[float]
    action: _containers.RepeatedScalarFieldContainer[float]
    reward: float
    is_terminal: bool
    images: _containers.RepeatedCompositeFieldContainer[ImageObs]
    def __init__(self, timestep: _Optional[int] = ..., state: _Optional[_Iterable[float]] = ..., action: _Optional[_Iterable[float]] = ..., reward: _Optional[float] = ..., is_terminal: _Optional[bool] = ..., images: _Optional[_Iterable[_Union[ImageObs, _Mapping]]] = ...) -> None: ...

class ImageObs(_message.Message):
    __slots__ = ("camera", "width", "height", "channels", "data")
    CAMERA_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    camera: str
    width: int
    height: int
    channels: int
    data: bytes
    def __init__(self, camera: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., channels: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class Episode(_message.Message):
    __slots__ = ("meta", "frames", "arrays", "images", "index", "source", "position")
    class ArraysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    META_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    meta: EpisodeMeta
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    arrays: _containers.MessageMap[str, Tensor]
    images: _containers.RepeatedCompositeFieldContainer[CameraFrames]
    index: int
    source: int
    position: int
    def __init__(self, meta: _Optional[_Union[EpisodeMeta, _Mapping]] = ..., frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ..., arrays: _Optional[_Mapping[str, Tensor]] = ..., images: _Optional[_Iterable[_Union[CameraFrames, _Mapping]]] = ..., index: _Optional[int] = ..., source: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class WindowBatch(_message.Message):
    __slots__ = ("arrays", "tasks", "images")
    class ArraysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    arrays: _containers.MessageMap[str, Tensor]
    tasks: _containers.RepeatedScalarFieldContainer[str]
    images: _containers.RepeatedCompositeFieldContainer[CameraFrames]
    def __init__(self, arrays: _Optional[_Mapping[str, Tensor]] = ..., tasks: _Optional[_Iterable[str]] = ..., images: _Optional[_Iterable[_Union[CameraFrames, _Mapping]]] = ...) -> None: ...

class EpisodeResponse(_message.Message):
    __slots__ = ("episode",)
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    episode: Episode
    def __init__(self, episode: _Optional[_Union[Episode, _Mapping]] = ...) -> None: ...

class MetaResponse(_message.Message):
    __slots__ = ("meta", "source", "position")
    META_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    meta: EpisodeMeta
    source: int
    position: int
    def __init__(self, meta: _Optional[_Union[EpisodeMeta, _Mapping]] = ..., source: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class BatchResponse(_message.Message):
    __slots__ = ("episodes", "windows", "next_offset", "batches")
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    NEXT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    episodes: _containers.RepeatedCompositeFieldContainer[Episode]
    windows: WindowBatch
    next_offset: int
    batches: int
    def __init__(self, episodes: _Optional[_Iterable[_Union[Episode, _Mapping]]] = ..., windows: _Optional[_Union[WindowBatch, _Mapping]] = ..., next_offset: _Optional[int] = ..., batches: _Optional[int] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("positions", "metas", "total_matches")
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    METAS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MATCHES_FIELD_NUMBER: _ClassVar[int]
    positions: _containers.RepeatedScalarFieldContainer[int]
    metas: _containers.RepeatedCompositeFieldContainer[EpisodeMeta]
    total_matches: int
    def __init__(self, positions: _Optional[_Iterable[int]] = ..., metas: _Optional[_Iterable[_Union[EpisodeMeta, _Mapping]]] = ..., total_matches: _Optional[int] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("num_episodes", "num_frames", "num_sources", "version", "sources", "shares", "max_batch", "max_message_bytes", "cameras", "source_episodes", "features")
    NUM_EPISODES_FIELD_NUMBER: _ClassVar[int]
    NUM_FRAMES_FIELD_NUMBER: _ClassVar[int]
    NUM_SOURCES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAMERAS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_EPISODES_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    num_episodes: int
    num_frames: int
    num_sources: int
    version: str
    sources: _containers.RepeatedScalarFieldContainer[str]
    shares: _containers.RepeatedScalarFieldContainer[float]
    max_batch: int
    max_message_bytes: int
    cameras: _containers.RepeatedScalarFieldContainer[str]
    source_episodes: _containers.RepeatedScalarFieldContainer[int]
    features: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, num_episodes: _Optional[int] = ..., num_frames: _Optional[int] = ..., num_sources: _Optional[int] = ..., version: _Optional[str] = ..., sources: _Optional[_Iterable[str]] = ..., shares: _Optional[_Iterable[float]] = ..., max_batch: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., cameras: _Optional[_Iterable[str]] = ..., source_episodes: _Optional[_Iterable[int]] = ..., features: _Optional[_Iterable[str]] = ...) -> None: ...
