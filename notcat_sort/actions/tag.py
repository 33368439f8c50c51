"""Tag: leave the image where it is and record its label in its XMP sidecar.

The label goes into `dc:subject` (the keywords digiKam, darktable and Lightroom read) beside any
keywords already there; a cat's breed and mood (from a model that outputs them) go there as
`cat/breed/Siamese` and `cat/mood/happy`, and also into `lr:hierarchicalSubject` as `cat|breed|Siamese`
(Lightroom's hierarchy, `|` between levels, which digiKam reads too); the probability, the model and the keyword this tool added go into the
project's own namespace. An existing sidecar is merged, never clobbered; a label from an earlier
run is replaced, but a keyword the user had already is never removed. Sidecars are written
atomically (temporary file, fsync, rename).

Undo: before a sidecar is changed, its previous content (or the fact that there was none) is
kept in an undo record under the user's data folder (not the cache, which users clear), one
record per sidecar with an entry per run, keyed by the run's report. `untag()` undoes the entry
of the run it is given: it puts that content back, or deletes a sidecar this tool created; if
the sidecar was edited since, it removes only what this tool wrote and keeps the edits; if a
later run tagged it since, that tag stays.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import astuple, dataclass, field
from pathlib import Path

from platformdirs import user_data_dir

from notcat_sort.actions.common import Outcome, fsync_dir, rename_noreplace
from notcat_sort.model import Guess, Trait
from notcat_sort.report import Status, format_p

NOTCAT_NS = "https://notcat-sort.dev/ns/1.0/"
RDF_NS = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC_NS = "http://purl.org/dc/elements/1.1/"
X_NS = "adobe:ns:meta/"
LR_NS = "http://ns.adobe.com/lightroom/1.0/"
_PREFIXES = {"x": X_NS, "rdf": RDF_NS, "dc": DC_NS, "lr": LR_NS, "notcat": NOTCAT_NS}
_PROPERTIES = ("label", "pCat", "model", "keyword", "catKeyword", "breedKeyword", "moodKeyword", "breedHierarchy",
               "moodHierarchy")
_HIERARCHY_SEPARATOR = "|"  # between the levels of an lr:hierarchicalSubject keyword
_ATTRIBUTE_FOLDERS = {Trait.BREED: "breed", Trait.MOOD: "mood"}  # cat/breed/..., cat/mood/...
_XPACKET_BEGIN = "<?xpacket begin=\"\ufeff\" id=\"W5M0MpCehiHzreSzNTczkc9d\"?>\n"
_XPACKET_END = "\n<?xpacket end=\"w\"?>\n"
_EMPTY_XMP = (
    f'<x:xmpmeta xmlns:x="{X_NS}"><rdf:RDF xmlns:rdf="{RDF_NS}">'
    f'<rdf:Description rdf:about=""/></rdf:RDF></x:xmpmeta>'
)


def _q(namespace: str, name: str) -> str:
    return f"{{{namespace}}}{name}"


for _prefix, _uri in _PREFIXES.items():
    ET.register_namespace(_prefix, _uri)


class SidecarError(Exception):
    """An existing sidecar this tool will not rewrite (unreadable or not XMP)."""


@dataclass(frozen=True)
class Note:
    """What this tool writes: the `notcat:*` properties of a sidecar."""

    label: str
    p_cat: str
    model: str
    keyword: str = ""  # the dc:subject keyword this tool added; "" when the user had it already
    # --group-cats: the hierarchical keyword `cat/<cat-id>` this tool added ("" when the user had it);
    # None without --group-cats, and then not written at all.
    cat_keyword: str | None = None
    # A cat's breed and mood keywords this tool added, flat in dc:subject (`cat/breed/Siamese`) and in
    # lr:hierarchicalSubject (`cat|breed|Siamese`); "" when the user had it, None when there is none.
    breed_keyword: str | None = None
    mood_keyword: str | None = None
    breed_hierarchy: str | None = None
    mood_hierarchy: str | None = None

    @property
    def claimed(self) -> tuple[str, ...]:
        """The dc:subject keywords this tool added."""
        return tuple(keyword for keyword in (self.keyword, self.cat_keyword, self.breed_keyword, self.mood_keyword)
                     if keyword)

    @property
    def claimed_hierarchy(self) -> tuple[str, ...]:
        """The lr:hierarchicalSubject keywords this tool added."""
        return tuple(keyword for keyword in (self.breed_hierarchy, self.mood_hierarchy) if keyword)


# --- the XMP document ---------------------------------------------------------------------


def _parse(document: bytes | None) -> ET.Element:
    if document is None:
        return ET.fromstring(_EMPTY_XMP)
    try:
        for _event, (prefix, uri) in ET.iterparse(io.BytesIO(document), events=("start-ns",)):
            if prefix and prefix not in _PREFIXES:
                try:
                    ET.register_namespace(prefix, uri)  # keep the file's own prefixes on output
                except ValueError:
                    pass
        root = ET.fromstring(document)
    except ET.ParseError as error:
        raise SidecarError(f"existing sidecar is not valid XML ({error}); left untouched") from None
    rdf = root if root.tag == _q(RDF_NS, "RDF") else root.find(f".//{_q(RDF_NS, 'RDF')}")
    if rdf is None:
        raise SidecarError("existing sidecar has no rdf:RDF element (not XMP); left untouched")
    return root


def _rdf(root: ET.Element) -> ET.Element:
    """The rdf:RDF element (`_parse` made sure there is one)."""
    rdf = root if root.tag == _q(RDF_NS, "RDF") else root.find(f".//{_q(RDF_NS, 'RDF')}")
    assert rdf is not None
    return rdf


def _descriptions(root: ET.Element) -> list[ET.Element]:
    """Every rdf:Description (exiftool writes one per namespace)."""
    return _rdf(root).findall(_q(RDF_NS, "Description"))


def _description(root: ET.Element) -> ET.Element:
    """The rdf:Description holding dc:subject, else the first one (created if there is none)."""
    descriptions = _descriptions(root)
    for description in descriptions:
        if description.find(_q(DC_NS, "subject")) is not None:
            return description
    if descriptions:
        return descriptions[0]
    return ET.SubElement(_rdf(root), _q(RDF_NS, "Description"), {_q(RDF_NS, "about"): ""})


def _keyword_bag(description: ET.Element) -> ET.Element:
    subject = description.find(_q(DC_NS, "subject"))
    if subject is None:
        subject = ET.SubElement(description, _q(DC_NS, "subject"))
    bag = subject.find(_q(RDF_NS, "Bag"))
    if bag is None:
        bag = ET.SubElement(subject, _q(RDF_NS, "Bag"))
    return bag


def keywords(root: ET.Element) -> list[str]:
    bag = _description(root).find(f"{_q(DC_NS, 'subject')}/{_q(RDF_NS, 'Bag')}")
    return [] if bag is None else [item.text or "" for item in bag.findall(_q(RDF_NS, "li"))]


def _hierarchy_bag(root: ET.Element) -> ET.Element:
    """The lr:hierarchicalSubject bag, wherever the sidecar has it; made beside dc:subject if it has none."""
    for description in _descriptions(root):
        subject = description.find(_q(LR_NS, "hierarchicalSubject"))
        if subject is not None:
            bag = subject.find(_q(RDF_NS, "Bag"))
            return bag if bag is not None else ET.SubElement(subject, _q(RDF_NS, "Bag"))
    subject = ET.SubElement(_description(root), _q(LR_NS, "hierarchicalSubject"))
    return ET.SubElement(subject, _q(RDF_NS, "Bag"))


def hierarchical_keywords(root: ET.Element) -> list[str]:
    for description in _descriptions(root):
        bag = description.find(f"{_q(LR_NS, 'hierarchicalSubject')}/{_q(RDF_NS, 'Bag')}")
        if bag is not None:
            return [item.text or "" for item in bag.findall(_q(RDF_NS, "li"))]
    return []


def read_note(root: ET.Element) -> Note | None:
    values = dict.fromkeys(_PROPERTIES, "")
    for description in _descriptions(root):
        for name in _PROPERTIES:
            element = description.find(_q(NOTCAT_NS, name))
            value = (element.text or "") if element is not None else description.get(_q(NOTCAT_NS, name), "")
            values[name] = value or values[name]
    if not values["label"]:
        return None
    return Note(*(values[name] for name in _PROPERTIES))


def _remove_keyword(bag: ET.Element, keyword: str) -> None:
    for item in bag.findall(_q(RDF_NS, "li")):
        if item.text == keyword:
            bag.remove(item)


def _add_keyword(bag: ET.Element, keyword: str) -> None:
    if keyword not in (item.text for item in bag.findall(_q(RDF_NS, "li"))):
        ET.SubElement(bag, _q(RDF_NS, "li")).text = keyword


def _write_note(root: ET.Element, note: Note | None) -> None:
    """Replace the `notcat:*` properties (and the keyword they claim) with `note`'s."""
    description = _description(root)
    old = read_note(root)
    for keyword in old.claimed if old is not None else ():
        if note is None or keyword not in note.claimed:
            _remove_keyword(_keyword_bag(description), keyword)
    for keyword in old.claimed_hierarchy if old is not None else ():
        if note is None or keyword not in note.claimed_hierarchy:
            _remove_keyword(_hierarchy_bag(root), keyword)
    for holder in _descriptions(root):
        for name in _PROPERTIES:
            holder.attrib.pop(_q(NOTCAT_NS, name), None)
            for element in holder.findall(_q(NOTCAT_NS, name)):
                holder.remove(element)
    if note is None:
        return
    for keyword in note.claimed:
        _add_keyword(_keyword_bag(description), keyword)
    for keyword in note.claimed_hierarchy:
        _add_keyword(_hierarchy_bag(root), keyword)
    for name, value in zip(_PROPERTIES, astuple(note), strict=True):  # the fields are in _PROPERTIES' order
        if value is not None:
            ET.SubElement(description, _q(NOTCAT_NS, name)).text = value


def attribute_keywords(label: str, guesses: Mapping[Trait, Guess]) -> dict[Trait, str]:
    """The keyword of each attribute that names something (`cat/breed/Siamese`, `cat/mood/happy`);
    none for a breed that is not confident."""
    return {trait: f"{label}/{_ATTRIBUTE_FOLDERS[trait]}/{guess.name}" for trait, guess in guesses.items()
            if guess.name and trait in _ATTRIBUTE_FOLDERS}


def tagged(document: bytes | None, label: str, p_cat: str, model: str, cat: str = "",
           guesses: Mapping[Trait, Guess] | None = None) -> bytes:
    """The sidecar `document` (None: none yet) with `label` as its notcat label and keyword, with
    --group-cats `cat/<cat>` as a hierarchical keyword (digiKam and Lightroom show cat > <cat>), and
    a cat's breed and mood keywords (see `attribute_keywords`), flat and in lr:hierarchicalSubject."""
    root = _parse(document)
    old = read_note(root)
    claimed = old.claimed if old is not None else ()
    claimed_hierarchy = old.claimed_hierarchy if old is not None else ()

    def ours(keyword: str) -> str:
        """`keyword` to add and claim, or "" when the user has it already."""
        return "" if keyword in keywords(root) and keyword not in claimed else keyword

    def ours_hierarchy(keyword: str) -> str:
        keyword = keyword.replace("/", _HIERARCHY_SEPARATOR)
        return "" if keyword in hierarchical_keywords(root) and keyword not in claimed_hierarchy else keyword

    found = attribute_keywords(label, guesses or {})
    breed, mood = found.get(Trait.BREED), found.get(Trait.MOOD)
    _write_note(root, Note(label, p_cat, model, ours(label), ours(f"{label}/{cat}") if cat else None,
                           None if breed is None else ours(breed), None if mood is None else ours(mood),
                           None if breed is None else ours_hierarchy(breed), None if mood is None else ours_hierarchy(mood)))
    return _serialize(root)


def _state(document: bytes) -> tuple[Note | None, list[str], list[str]]:
    root = _parse(document)
    return read_note(root), keywords(root), hierarchical_keywords(root)


def _serialize(root: ET.Element) -> bytes:
    ET.indent(root, space=" ")
    return (_XPACKET_BEGIN + ET.tostring(root, encoding="unicode") + _XPACKET_END).encode("utf-8")


# --- files ----------------------------------------------------------------------------------


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes, replace: bool) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, then rename it into place.

    With `replace=False` an existing `path` is never replaced (FileExistsError instead)."""
    temporary = path.with_name(f".{path.name}.notcat-partial")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            shutil.copymode(path, temporary)
            os.replace(temporary, path)
        else:
            rename_noreplace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    fsync_dir(path.parent)


def undo_folder() -> Path:
    return Path(user_data_dir("notcat-sort")) / "tag-undo"


def _undo_record(sidecar: Path) -> Path:
    key = hashlib.sha256(os.fsencode(os.path.abspath(sidecar))).hexdigest()
    return undo_folder() / f"{key}.json"


def _load_entries(sidecar: Path) -> list[dict]:
    try:
        return json.loads(_undo_record(sidecar).read_text(encoding="utf-8"))["entries"]
    except FileNotFoundError:
        return []


def _save_entries(sidecar: Path, entries: list[dict]) -> None:
    record = _undo_record(sidecar)
    if not entries:
        record.unlink(missing_ok=True)
        return
    record.parent.mkdir(parents=True, exist_ok=True)
    data = {"sidecar": os.fsdecode(os.path.abspath(sidecar)), "entries": entries}
    write_atomically(record, json.dumps(data).encode("utf-8"), replace=record.exists())


# --- the action and its undo ------------------------------------------------------------------


@dataclass(frozen=True)
class Tagging:
    """What a tag writes into an image's sidecar, and the run (its report) that `untag` undoes it by."""

    label: str
    p_cat: float | None
    model: str
    run: str
    cat: str = ""  # with --group-cats: the cat's id, also written as a keyword
    guesses: Mapping[Trait, Guess] = field(default_factory=dict)  # a cat's breed and mood, written as keywords


def tag(destination: Path, tagging: Tagging, dry_run: bool) -> Outcome:
    """Record `tagging` in the sidecar `destination` (see sidecars.xmp_path); a dry run only says
    whether it would change."""
    before = _read(destination)
    try:
        after = tagged(before, tagging.label, format_p(tagging.p_cat), tagging.model, tagging.cat, tagging.guesses)
    except SidecarError as error:
        return Outcome(Status.ERROR, destination, f"{error}: {destination}")
    if before is not None and _state(before) == _state(after):
        return Outcome(Status.SKIPPED, destination, "already tagged")
    if dry_run:
        return Outcome(Status.PLANNED, destination)
    entries = _load_entries(destination)
    entries.append({
        "run": tagging.run,
        "before": None if before is None else base64.b64encode(before).decode("ascii"),
        "after_sha256": _sha256(after),
    })
    _save_entries(destination, entries)  # the undo record first, so a crash can still be undone
    write_atomically(destination, after, replace=before is not None)
    return Outcome(Status.DONE, destination)


def untag(source: Path, destination: Path, run: str, dry_run: bool = False) -> Outcome:
    """Undo the `tag` that the run `run` made to the sidecar `destination`.

    If it is the sidecar's latest tag and the sidecar is unchanged since, its previous bytes come
    back exactly (or it is deleted if this tool created it). If it was edited since, only this
    tool's keyword and properties are taken out (and the earlier run's put back), so the edits
    survive. If a later run has tagged it since, that tag stays, and undoing that run later puts
    back the sidecar as it was before this one."""
    entries = _load_entries(destination)
    index = next((i for i in reversed(range(len(entries))) if entries[i].get("run") == run), None)
    if index is None:
        return Outcome(Status.SKIPPED, destination, "no tag by this run recorded for this sidecar")
    entry = entries[index]
    before = None if entry["before"] is None else base64.b64decode(entry["before"])
    current = _read(destination)
    note = ""
    if current is None:
        return Outcome(Status.SKIPPED, destination, "sidecar no longer exists; nothing to undo")
    if dry_run:
        return Outcome(Status.PLANNED, destination)
    if index < len(entries) - 1:
        entries[index + 1] = {**entries[index + 1], "before": entry["before"]}
        _save_entries(destination, entries[:index] + entries[index + 1:])
        return Outcome(Status.DONE, destination, "a later run has tagged this sidecar since: kept its tag; "
                                                 "undoing that run now restores the sidecar from before this one")
    if _sha256(current) == entry["after_sha256"]:
        if before is None:
            destination.unlink()
            fsync_dir(destination.parent)
        else:
            write_atomically(destination, before, replace=True)
    else:
        try:
            root = _parse(current)
            _write_note(root, None if before is None else read_note(_parse(before)))
        except SidecarError as error:
            return Outcome(Status.ERROR, destination, f"sidecar changed since tagging and {error}")
        write_atomically(destination, _serialize(root), replace=True)
        note = "sidecar was edited since tagging: removed only the tag, kept the edits"
    _save_entries(destination, entries[:index])
    return Outcome(Status.DONE, destination, note)
