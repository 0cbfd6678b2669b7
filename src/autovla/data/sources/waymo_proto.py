"""The Waymo E2E protobuf messages, declared at runtime with the field numbers of the
official protos (docs/real-datasets.md) — no protoc, no TensorFlow. Only the fields the
converter reads are declared; the others are kept as unknown fields by the runtime.
"""

from __future__ import annotations

from functools import cache

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "waymo.open_dataset"


def _msg(fp, name: str, fields: list[tuple[str, int, int, int, str | None, bool]]) -> None:
    m = fp.message_type.add(name=name)
    for fname, number, ftype, label, type_name, packed in fields:
        f = m.field.add(name=fname, number=number, type=ftype, label=label)
        if type_name:
            f.type_name = f".{PACKAGE}.{type_name}"
        if packed:
            f.options.packed = True


@cache
def messages() -> dict[str, type]:
    """Message classes by name: E2EDFrame, Frame, Context, CameraImage, CameraCalibration,
    Transform, EgoTrajectoryStates; and E2EDFrameHeader / FrameHeader, the same wire format
    reduced to the context and the timestamp (to index records without decoding images)."""
    opt, rep = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
    fp = descriptor_pb2.FileDescriptorProto(
        name="autovla_waymo_e2e.proto", package=PACKAGE, syntax="proto2"
    )
    _msg(fp, "Transform", [("transform", 1, _F.TYPE_DOUBLE, rep, None, False)])
    _msg(
        fp,
        "CameraCalibration",
        [
            ("name", 1, _F.TYPE_INT32, opt, None, False),
            ("intrinsic", 2, _F.TYPE_DOUBLE, rep, None, False),
            ("extrinsic", 3, _F.TYPE_MESSAGE, opt, "Transform", False),
            ("width", 4, _F.TYPE_INT32, opt, None, False),
            ("height", 5, _F.TYPE_INT32, opt, None, False),
        ],
    )
    _msg(
        fp,
        "Context",
        [
            ("name", 1, _F.TYPE_STRING, opt, None, False),
            ("camera_calibrations", 2, _F.TYPE_MESSAGE, rep, "CameraCalibration", False),
        ],
    )
    _msg(
        fp,
        "CameraImage",
        [
            ("name", 1, _F.TYPE_INT32, opt, None, False),
            ("image", 2, _F.TYPE_BYTES, opt, None, False),
        ],
    )
    _msg(
        fp,
        "Frame",
        [
            ("context", 1, _F.TYPE_MESSAGE, opt, "Context", False),
            ("timestamp_micros", 2, _F.TYPE_INT64, opt, None, False),
            ("images", 4, _F.TYPE_MESSAGE, rep, "CameraImage", False),
        ],
    )
    states = [
        (n, i + 1, _F.TYPE_FLOAT, rep, None, True)
        for i, n in enumerate(["pos_x", "pos_y", "pos_z", "vel_x", "vel_y", "accel_x", "accel_y"])
    ]
    _msg(
        fp,
        "EgoTrajectoryStates",
        [*states, ("preference_score", 8, _F.TYPE_FLOAT, opt, None, False)],
    )
    _msg(
        fp,
        "E2EDFrame",
        [
            ("frame", 1, _F.TYPE_MESSAGE, opt, "Frame", False),
            ("future_states", 5, _F.TYPE_MESSAGE, opt, "EgoTrajectoryStates", False),
            ("past_states", 6, _F.TYPE_MESSAGE, opt, "EgoTrajectoryStates", False),
            ("intent", 7, _F.TYPE_INT32, opt, None, False),  # enum on the wire: a varint
            ("preference_trajectories", 8, _F.TYPE_MESSAGE, rep, "EgoTrajectoryStates", False),
        ],
    )
    _msg(
        fp,
        "FrameHeader",
        [
            ("context", 1, _F.TYPE_MESSAGE, opt, "Context", False),
            ("timestamp_micros", 2, _F.TYPE_INT64, opt, None, False),
        ],
    )
    _msg(fp, "E2EDFrameHeader", [("frame", 1, _F.TYPE_MESSAGE, opt, "FrameHeader", False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fp)
    return {
        m.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{m.name}"))
        for m in fp.message_type
    }
