from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user_id", "candidate_ids", "top_k", "tail_weight", "explain", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TAIL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    candidate_ids: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    tail_weight: float
    explain: bool
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., candidate_ids: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., tail_weight: _Optional[float] = ..., explain: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("item_id", "score", "click_probability", "is_tail", "explanation", "because")
    class ExplanationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CLICK_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    IS_TAIL_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    BECAUSE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    click_probability: float
    is_tail: bool
    explanation: _containers.ScalarMap[str, float]
    because: _containers.RepeatedCompositeFieldContainer[Influence]
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., click_probability: _Optional[float] = ..., is_tail: _Optional[bool] = ..., explanation: _Optional[_Mapping[str, float]] = ..., because: _Optional[_Iterable[_Union[Influence, _Mapping]]] = ...) -> None: ...

class Influence(_message.Message):
    __slots__ = ("item_id", "weight")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    weight: float
    def __init__(self, item_id: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class UnscoredItem(_message.Message):
    __slots__ = ("item_id", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("items", "model_version", "unscored", "cold_user", "request_id", "tail_weight")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNSCORED_FIELD_NUMBER: _ClassVar[int]
    COLD_USER_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TAIL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    model_version: str
    unscored: _containers.RepeatedCompositeFieldContainer[UnscoredItem]
    cold_user: bool
    request_id: str
    tail_weight: float
    def __init__(self, items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., unscored: _Optional[_Iterable[_Union[UnscoredItem, _Mapping]]] = ..., cold_user: _Optional[bool] = ..., request_id: _Optional[str] = ..., tail_weight: _Optional[float] = ...) -> None: ...

class FeedbackEvent(_message.Message):
    __slots__ = ("user_id", "item_id", "event_type", "timestamp_ms", "request_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    event_type: str
    timestamp_ms: int
    request_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., event_type: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[FeedbackEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[FeedbackEvent, _Mapping]]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...

class ItemUpsert(_message.Message):
    __slots__ = ("item_id", "text", "numeric")
    class TextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class NumericEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: _containers.ScalarMap[str, str]
    numeric: _containers.ScalarMap[str, float]
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[_Mapping[str, str]] = ..., numeric: _Optional[_Mapping[str, float]] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ItemUpsert]
    def __init__(self, items: _Optional[_Iterable[_Union[ItemUpsert, _Mapping]]] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("upserted", "created", "updated")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    created: int
    updated: int
    def __init__(self, upserted: _Optional[int] = ..., created: _Optional[int] = ..., updated: _Optional[int] = ...) -> None: ...
