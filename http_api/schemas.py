"""marshmallow schemas of ``/api/v1`` (also the source of the OpenAPI description).

Attribute names are database column names; ``data_key`` gives the e-dream JSON name.
"""

from __future__ import annotations

from typing import Any

from marshmallow import INCLUDE, Schema, fields, validate

from db.dreams import STATUSES

INT32 = 2**31
"""PostgreSQL ``integer`` holds [-2**31, 2**31 - 1]; ``bigint`` [-2**63, 2**63 - 1]."""
INT64 = 2**63
MEDIA_TYPES = ("video", "image")
#: The e-dream remote-control events.
REMOTE_CONTROL_EVENTS = (
    "playing", "play_dream", "play_playlist", "like", "dislike", "like_current_dream", "dislike_current_dream",
    "previous", "next", "repeat", "shuffle", "playback_slower", "playback_faster", "backward", "forward",
    "brighter", "darker", "credit", "web", "help", "status", *(f"set_speed_{n}" for n in range(1, 10)),
    "pause", "capture", "report", "reset_playlist",
)  # fmt: skip


class UserRefSchema(Schema):
    """A dream's owner: ``{"uuid": ..., "name": ...}``."""

    uuid = fields.String(metadata={"format": "uuid"})
    name = fields.String()


class DreamSchema(Schema):
    """A dream as the API returns it (``featureRank`` only for admins)."""

    uuid = fields.String(metadata={"format": "uuid"})
    name = fields.String()
    description = fields.String(allow_none=True)
    status = fields.String(metadata={"enum": list(STATUSES)})
    media_type = fields.String(data_key="mediaType", metadata={"enum": list(MEDIA_TYPES)})
    video = fields.String(allow_none=True)
    original_video = fields.String(allow_none=True)
    thumbnail = fields.String(allow_none=True)
    filmstrip = fields.Raw(allow_none=True)
    processed_video_size = fields.Integer(data_key="processedVideoSize", allow_none=True)
    processed_video_frames = fields.Integer(data_key="processedVideoFrames", allow_none=True)
    processed_video_fps = fields.Float(data_key="processedVideoFPS", allow_none=True)
    processed_media_width = fields.Integer(data_key="processedMediaWidth", allow_none=True)
    processed_media_height = fields.Integer(data_key="processedMediaHeight", allow_none=True)
    render_duration = fields.Float(allow_none=True)
    activity_level = fields.Float(data_key="activityLevel")
    feature_rank = fields.Integer(data_key="featureRank", validate=validate.Range(min=-INT32, max=INT32 - 1))
    upvotes = fields.Integer()
    downvotes = fields.Integer()
    nsfw = fields.Boolean()
    hidden = fields.Boolean()
    ccby_license = fields.Boolean(data_key="ccbyLicense")
    source_url = fields.String(data_key="sourceUrl", allow_none=True)
    md5 = fields.String(allow_none=True)
    prompt = fields.Raw(allow_none=True)
    error = fields.String(allow_none=True)
    user = fields.Nested(UserRefSchema)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    processed_at = fields.DateTime(allow_none=True)
    deleted_at = fields.DateTime(allow_none=True)


def dump_dream(row: dict[str, Any], *, admin: bool = False) -> dict[str, Any]:
    """A dream row as API JSON; ``featureRank`` is left out unless ``admin``."""
    data = {**row, "uuid": str(row["uuid"]), "user": {"uuid": str(row["user_id"]), "name": row["user_name"]}}
    schema = DreamSchema() if admin else DreamSchema(exclude=("feature_rank",))
    return dict(schema.dump(data))


_URL = validate.URL(require_tld=False)


class DreamCreateSchema(Schema):
    """``POST /api/v1/dream``."""

    name = fields.String(required=True, validate=validate.Length(min=1, max=255))
    description = fields.String(allow_none=True, validate=validate.Length(max=10000))
    prompt = fields.Raw(allow_none=True, metadata={"description": "a string or any JSON object"})
    media_type = fields.String(data_key="mediaType", validate=validate.OneOf(MEDIA_TYPES))
    video = fields.String(allow_none=True, validate=_URL)
    original_video = fields.String(allow_none=True, validate=_URL)
    thumbnail = fields.String(allow_none=True, validate=_URL)
    source_url = fields.String(data_key="sourceUrl", allow_none=True, validate=_URL)
    activity_level = fields.Float(data_key="activityLevel", validate=validate.Range(min=0))
    nsfw = fields.Boolean()
    hidden = fields.Boolean()
    ccby_license = fields.Boolean(data_key="ccbyLicense")


class DreamUpdateSchema(DreamCreateSchema):
    """``PUT /api/v1/dream/{uuid}``: any subset of the fields (``featureRank``: admins only)."""

    name = fields.String(validate=validate.Length(min=1, max=255))
    feature_rank = fields.Integer(data_key="featureRank", validate=validate.Range(min=-INT32, max=INT32 - 1))


class ProcessedSchema(Schema):
    """``POST /api/v1/dream/{uuid}/status/processed``: the processed media."""

    video = fields.String(allow_none=True, validate=_URL)
    original_video = fields.String(allow_none=True, validate=_URL)
    thumbnail = fields.String(allow_none=True, validate=_URL)
    filmstrip = fields.Raw(allow_none=True)
    md5 = fields.String(allow_none=True)
    processed_video_size = fields.Integer(data_key="processedVideoSize", validate=validate.Range(min=0, max=INT64 - 1))
    processed_video_frames = fields.Integer(
        data_key="processedVideoFrames", validate=validate.Range(min=0, max=INT32 - 1)
    )
    processed_video_fps = fields.Float(data_key="processedVideoFPS", validate=validate.Range(min=0))
    processed_media_width = fields.Integer(
        data_key="processedMediaWidth", validate=validate.Range(min=0, max=INT32 - 1)
    )
    processed_media_height = fields.Integer(
        data_key="processedMediaHeight", validate=validate.Range(min=0, max=INT32 - 1)
    )
    render_duration = fields.Float(validate=validate.Range(min=0))


class FailedSchema(Schema):
    """``POST /api/v1/dream/{uuid}/status/failed``."""

    error = fields.String(required=True, validate=validate.Length(min=1, max=10000))


class ProcessingSchema(Schema):
    """``POST /api/v1/dream/{uuid}/status/processing`` (no fields)."""


class DreamListQuerySchema(Schema):
    """Query of ``GET /api/v1/dream``."""

    status = fields.String(validate=validate.OneOf(STATUSES))
    take = fields.Integer(load_default=10, validate=validate.Range(min=1, max=500))
    skip = fields.Integer(load_default=0, validate=validate.Range(min=0, max=INT64 - 1))
    user_uuid = fields.UUID(data_key="userUUID")


class DreamListSchema(Schema):
    """``{"dreams": [...], "count": total}``."""

    dreams = fields.List(fields.Nested(DreamSchema))
    count = fields.Integer()


class DreamEnvelopeSchema(Schema):
    """``{"dream": {...}}``."""

    dream = fields.Nested(DreamSchema)


class RemoteControlSchema(Schema):
    """``POST /api/v1/remote-control``: an e-dream remote-control event (other fields pass through)."""

    class Meta:
        unknown = INCLUDE

    event = fields.String(required=True, validate=validate.OneOf(REMOTE_CONTROL_EVENTS))
    uuid = fields.String(validate=validate.Length(min=1, max=64))
    frame_number = fields.Integer(
        data_key="frameNumber", attribute="frameNumber", validate=validate.Range(min=0, max=INT64 - 1)
    )


class DeviceSchema(Schema):
    """One device of the caller listening on its remote-control topic."""

    client = fields.String(metadata={"description": "<instance id>.<connection id>: random per connection"})
    info = fields.Dict(metadata={"description": "the client_info its LISTEN sent, e.g. a device name ({} without)"})


class RemoteControlDevicesSchema(Schema):
    """``GET /api/v1/remote-control/devices``: the caller's devices that would receive a command."""

    connections = fields.Integer(metadata={"description": "devices (connections) listening, on every instance"})
    users = fields.Integer(metadata={"description": "1 while any listens, else 0"})
    devices = fields.List(
        fields.Nested(DeviceSchema),
        metadata={"description": "sorted by client; left out when there are more than PRESENCE_MAX_CLIENTS"},
    )
