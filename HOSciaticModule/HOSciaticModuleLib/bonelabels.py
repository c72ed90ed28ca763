"""Which segments of a given segmentation are native bone.

A whole-body segmentation (TotalSegmentator's ``total`` task gives over a hundred
segments) holds muscles, vessels and organs beside the bones. Taking every segment
as native bone would hide the HO that grows inside a muscle, which is where HO of
the hip grows. Segments are therefore read by what they are called: their displayed
name, their ID (TotalSegmentator keeps its own structure name there, such as
``gluteus_maximus_left``, even when the displayed name is translated) and their
terminology (the DICOM/SNOMED type, such as "Femur").

No numerical library is needed here: the panel and the command line both use it.
"""

from __future__ import annotations

import gzip
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

#: Words that name a bone (or the whole skeleton), in English and the Latin of anatomy.
BONE_WORDS = frozenset("""
    bone bones skeleton femur femoral hip pelvis coxae coxal ilium ischium pubis acetabulum trochanter
    sacrum coccyx vertebra vertebrae spine rib ribs sternum skull mandible scapula clavicle clavicula
    humerus radius ulna carpal carpus metacarpal phalanx phalanges tibia fibula patella tarsal metatarsal
""".split())

#: Words that make a segment something other than bone, even beside a bone word:
#: "femoral artery", "hip implant", "skeletal muscle", "costal cartilages", and HO
#: itself (a segmentation of earlier HO must not hide it as native bone). The muscles
#: around the hip are named too: a label map carries TotalSegmentator's bare structure
#: names ("gluteus_maximus_right", "iliopsoas_left"), without the word "muscle".
NOT_BONE_WORDS = frozenset("""
    muscle muscles musculus gluteus iliopsoas psoas iliacus piriformis obturator gemellus quadratus
    adductor sartorius rectus vastus tensor autochthon erector
    artery arteries arterial aorta vein veins vena venous vessel vessels
    nerve nerves cord plexus canal disc disk cartilage cartilages ligament tendon joint fluid fat fatty
    implant implants prosthesis cement cyst tumor tumour lesion mass calcification calcifications
    ossification ossifications heterotopic ho
""".split())

BONE, NOT_BONE, UNKNOWN = "bone", "not bone", "unknown"
#: Names listed in full in a message before the rest is only counted.
NAMES_LISTED = 6


def label_kind(name: str, segment_id: str = "", terminology: str = "") -> str:
    """``BONE``, ``NOT_BONE`` or ``UNKNOWN`` for a segment described by its name, ID
    and terminology text. A word against bone wins over a bone word.

    In a name or terminology text a word is a run of letters ("HO1" says HO, "Femur^"
    in a code says femur). An ID counts only by its parts between separators
    (``vertebrae_L5``, ``rib_left_1``): Slicer makes up an ID of random letters and
    digits for a segment added without one (``S_hO6lQ3XeePcwi2Xb``), whose runs of
    letters spell "ho", "hip", "rib" or "fat" about once in 1 400 segments and turned a
    femur segment into "not bone" or a muscle into bone.
    """
    words = set(re.findall(r"[a-z]+", " ".join(d for d in (name, terminology) if d).lower()))
    words |= set(re.findall(r"[a-z0-9]+", (segment_id or "").lower()))
    if words & NOT_BONE_WORDS:
        return NOT_BONE
    if words & BONE_WORDS:
        return BONE
    return UNKNOWN


@dataclass
class NativeBoneChoice:
    """The segments taken as native bone, those left out, and whether any segment
    was recognised as a bone by its name."""

    used: list = field(default_factory=list)
    left_out: list = field(default_factory=list)
    named_as_bone: bool = False


def choose_native_bone(kinds: dict) -> NativeBoneChoice:
    """From ``key -> kind``: when any segment is named as a bone, the bones alone
    (organs of a whole-body segmentation carry no bone word either); otherwise all
    but those named as something else (a user's own ``Segment_1`` is used)."""
    bones = [key for key, kind in kinds.items() if kind == BONE]
    if bones:
        return NativeBoneChoice(bones, [key for key in kinds if key not in bones], True)
    used = [key for key, kind in kinds.items() if kind == UNKNOWN]
    return NativeBoneChoice(used, [key for key in kinds if key not in used], False)


def listed(names) -> str:
    """A few names in full, the rest counted."""
    names = list(names)
    shown = ", ".join(names[:NAMES_LISTED])
    return shown + (f" and {len(names) - NAMES_LISTED} more" if len(names) > NAMES_LISTED else "")


def choice_warnings(choice: NativeBoneChoice, names: dict, segmentation_name: str) -> list[str]:
    """What the reader should know about the choice (``names``: key -> displayed name)."""
    warnings = []
    if choice.left_out:
        warnings.append(
            f"{len(choice.left_out)} of the {len(choice.used) + len(choice.left_out)} segments of '{segmentation_name}' "
            f"are not bone by their names and were not taken as native bone ({listed(names[k] for k in choice.left_out)}): "
            "HO inside a muscle is still found. Rename a bone segment with its bone's name if it was left out.")
    if not choice.named_as_bone and len(choice.used) > 1:
        warnings.append(
            f"No segment of '{segmentation_name}' is named as a bone ({listed(names[k] for k in choice.used)}): all "
            f"{len(choice.used)} were taken as native bone. If a muscle or an organ is among them, HO inside it is "
            "missed: give the bones alone, or name the segments (femur, hip, sacrum, ...).")
    return warnings


# ---------------------------------------------------------------------------------------
# Label names stored in a NIfTI file
# ---------------------------------------------------------------------------------------
_LABEL_ENTRY = re.compile(r'<Label\s+Key="(\d+)"[^>]*>\s*(?:<!\[CDATA\[(.*?)\]\]>|([^<]*))\s*</Label>', re.S)
NIFTI1_HEADER_BYTES = 348


def nifti1_header(path):
    """(header bytes, byte order '<' or '>', extension bytes) of a NIfTI-1 file (.nii or
    .nii.gz); None for any other file or one that cannot be read."""
    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(NIFTI1_HEADER_BYTES + 4)
            if len(header) < NIFTI1_HEADER_BYTES + 4:
                return None
            for endian in "<>":
                if struct.unpack(endian + "i", header[:4])[0] == NIFTI1_HEADER_BYTES:
                    break
            else:
                return None  # NIfTI-2 or not NIfTI
            voxel_offset = int(struct.unpack(endian + "f", header[108:112])[0])
            extensions = b""
            if header[NIFTI1_HEADER_BYTES] != 0 and voxel_offset > NIFTI1_HEADER_BYTES + 4:
                extensions = stream.read(voxel_offset - NIFTI1_HEADER_BYTES - 4)
    except (OSError, EOFError, struct.error):
        return None
    return header, endian, extensions


def nifti_label_names(path) -> dict[int, str]:
    """Label value -> name from a NIfTI-1 header extension holding a label table
    (TotalSegmentator writes its multi-label files so); empty when there is none."""
    read = nifti1_header(path)
    if read is None:
        return {}
    _, endian, extensions = read
    names = {}
    position = 0
    while position + 8 <= len(extensions):
        size, _code = struct.unpack(endian + "ii", extensions[position:position + 8])
        if size < 8 or position + size > len(extensions):
            break
        text = extensions[position + 8:position + size].decode("utf-8", "replace")
        for key, cdata, plain in _LABEL_ENTRY.findall(text):
            name = (cdata or plain).strip()
            if name:
                names[int(key)] = name
        position += size
    return names
