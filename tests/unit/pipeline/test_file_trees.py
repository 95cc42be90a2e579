"""Folders of image files through the job's stages (without Ray): real decode, dlib detection, tiny
diffusion, the gate, fragments, finalize, the signed manifest, verify and the report, as for tars.
OUTPUT mirrors the tree: released files keep their folder and name, other files are copied byte for
byte, and a sample that is not released leaves no file behind."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from raypipe.audit.manifest import read_manifest
from raypipe.audit.report import render_report
from raypipe.audit.verify import verify_output
from raypipe.config import ConfigError, LimitsConfig, MethodConfig, ModelsConfig
from raypipe.io.filetrees import FileTreeError, group_folder, group_identity, group_name, group_uri
from raypipe.io.identity import object_identity
from raypipe.io.shards import ShardSpecError, expand_shards, shard_name
from raypipe.io.spans import InputChangedError
from raypipe.io.storage import StorageOptions
from raypipe.layout import LinkedOutputError, OutputLayout
from raypipe.pipeline.commit import commit_fragment, finalize_shard
from raypipe.pipeline.plan import OutputConflictError, make_plan
from raypipe.pipeline.read import ShardWork, shard_tasks, unscanned_content
from raypipe.pipeline.run import check_inputs_fit
from raypipe.pipeline.stages import Anonymize
from raypipe.records import Status
from tests.integration.jobs import jpeg, png, read_audit
from tests.unit.pipeline.stages_run import KEY, run_stages
from tests.unit.pipeline.test_input_growth import RUN, config, finish


def sign_finalized(layout: OutputLayout) -> None:
    """Sign what is finalized under OUTPUT, as the run does at its end."""
    from raypipe.audit.manifest import build_manifest, entry_from_files, finished_shards, read_manifest, write_manifest

    added = {name: entry_from_files(layout, name) for name in finished_shards(layout, None)}
    write_manifest(layout, build_manifest(read_manifest(layout), added, {"config_hash": "c" * 64}), KEY)


MODELS = ModelsConfig(preset="tiny", analyzer="dlib", device="cpu")
METHOD = MethodConfig(num_steps=6, face_size=128)


def zipped(name: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, payload)
    return buffer.getvalue()


def make_tree(root: Path) -> dict[str, bytes]:
    """A small tree of files: a portrait with its metadata at the top, a faceless photo and a note in
    a subfolder, a zipped portrait deeper down, and hidden entries that are no part of the dataset."""
    portrait = png(np.ascontiguousarray(data.astronaut()))
    files = {
        "astronaut.png": portrait,
        "astronaut.json": json.dumps({"caption": "a portrait"}).encode(),
        "sub/coffee.jpg": jpeg(np.ascontiguousarray(data.coffee())),
        "sub/notes.txt": b"plain text, released as it is\n",
        "sub/deeper/portrait.zip": zipped("face.png", portrait),
        ".hidden/secret.png": portrait,
        "sub/.DS_Store": b"\x00\x00\x00\x01Bud1",
    }
    for name, payload in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return files


@pytest.fixture(scope="module")
def anonymize() -> Anonymize:
    return Anonymize(MODELS, METHOD, LimitsConfig(), detect=True).ready()


def test_a_folder_is_listed_as_one_group_per_folder_with_hidden_names_left_out(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    groups = expand_shards(str(tmp_path / "in"), input_format="files")
    assert [shard_name(uri) for uri in groups] == ["%2E.files", "sub%2Fdeeper.files", "sub.files"]
    assert expand_shards(str(tmp_path / "in")) == groups  # auto: a folder that holds no shards
    identity = object_identity(groups[2], StorageOptions())
    assert identity["files"] == 2 and identity["etag"].startswith("listing-")  # .DS_Store is not one of them


def test_a_tree_comes_out_mirrored_anonymized_and_verified(anonymize: Anonymize, tmp_path: Path) -> None:
    given = make_tree(tmp_path / "in")
    out, held_at = tmp_path / "out", tmp_path / "held"
    for uri in expand_shards(str(tmp_path / "in"), input_format="files"):
        run_stages(uri, out, anonymize, quarantine=held_at)

    top = read_audit((out / ".raypipe/shards/%2E.files.audit.parquet").read_bytes())
    assert [(r["key"], r["status"]) for r in top] == [("astronaut", "anonymized")]
    sub = read_audit((out / ".raypipe/shards/sub.files.audit.parquet").read_bytes())
    assert [(r["key"], r["status"]) for r in sub] == [("coffee", "no_face"), ("notes", "no_face")]
    deeper = read_audit((out / ".raypipe/shards/sub%2Fdeeper.files.audit.parquet").read_bytes())
    assert [(r["key"], r["status"], r["error_step"]) for r in deeper] == [("portrait", "failed", "scan")]
    assert "it is a ZIP archive, which raypipe does not scan" in deeper[0]["error"]

    released = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".raypipe" not in p.parts)
    assert released == ["astronaut.json", "astronaut.png", "sub/coffee.jpg", "sub/notes.txt"]
    assert (out / "astronaut.json").read_bytes() == given["astronaut.json"]
    assert (out / "sub/coffee.jpg").read_bytes() == given["sub/coffee.jpg"]  # faceless: byte for byte
    assert (out / "sub/notes.txt").read_bytes() == given["sub/notes.txt"]
    anonymized = np.asarray(Image.open(out / "astronaut.png"))
    assert anonymized.shape == data.astronaut().shape and (out / "astronaut.png").read_bytes() != given["astronaut.png"]
    with tarfile.open(held_at / "sub%2Fdeeper.files.tar") as held:  # the original, with why it was held
        assert held.getnames() == ["portrait.zip", "portrait.raypipe-quarantine.json"]

    verified = verify_output(str(out), KEY)
    assert verified.ok, verified.problems
    html = render_report(str(out), tmp_path / "report.html", gallery=5).read_text()
    assert "Gallery of released faces (1 of at most 5)" in html


def test_verify_finds_a_changed_an_added_and_a_removed_file(anonymize: Anonymize, tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    for uri in expand_shards(str(tmp_path / "in"), input_format="files"):
        run_stages(uri, out, anonymize)
    assert verify_output(str(out), KEY).ok

    (out / "sub/notes.txt").write_bytes(b"changed\n")
    (out / "sub/planted.jpg").write_bytes((out / "sub/coffee.jpg").read_bytes())
    (out / "astronaut.json").unlink()
    (out / "elsewhere").mkdir()
    (out / "elsewhere/x.txt").write_bytes(b"x")
    found = {(p.kind, p.where) for p in verify_output(str(out), KEY).problems}
    assert ("modified", "sub.files key=notes") in found
    assert ("extra", "sub.files key=planted") in found  # a sample no audit record releases
    assert ("modified", "%2E.files key=astronaut") in found  # a member of a released sample is gone
    assert ("modified", "sub.files") in found and ("modified", "%2E.files") in found  # the digests
    assert ("extra", "elsewhere/x.txt") in found  # no group's folder


def test_a_group_that_changed_after_the_plan_is_refused_by_its_reader(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    uri = group_uri(str(tmp_path / "in"), "sub")
    work = ShardWork(uri, shard_name(uri), identity=group_identity(uri, StorageOptions()))
    (tmp_path / "in/sub/added.jpg").write_bytes(b"")
    with pytest.raises(InputChangedError, match="added, removed or replaced"):
        list(shard_tasks(work, StorageOptions(), LimitsConfig()))


def test_a_tree_that_grows_processes_new_folders_and_refuses_a_changed_one_by_name(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    finish(layout, make_plan(config(str(tmp_path / "in"), out), layout))
    assert (out / "sub/notes.txt").read_bytes() == (tmp_path / "in/sub/notes.txt").read_bytes()

    (tmp_path / "in/new").mkdir()
    (tmp_path / "in/new/note.txt").write_bytes(b"new")
    plan = make_plan(config(str(tmp_path / "in"), out), layout)
    assert [w.name for w in plan.pending] == ["new.files"]  # the others are finalized and unchanged

    (tmp_path / "in/sub/added.txt").write_bytes(b"added")
    with pytest.raises(OutputConflictError, match=r"changed since sub\.files was anonymized.*or use --overwrite"):
        make_plan(config(str(tmp_path / "in"), out), layout)
    plan = make_plan(config(str(tmp_path / "in"), out), layout, overwrite=True)  # finalized, not signed
    assert sorted(w.name for w in plan.pending) == ["new.files", "sub.files"] and not plan.overwrite
    assert not (out / "sub/notes.txt").exists()  # that group's results are gone; the others stay
    assert (out / "astronaut.json").exists()

    finish(layout, plan)
    sign_finalized(layout)
    (tmp_path / "in/sub/added.txt").write_bytes(b"changed again")
    signed = read_manifest(layout)
    with pytest.raises(OutputConflictError, match=r"changed since sub\.files was anonymized and signed"):
        make_plan(config(str(tmp_path / "in"), out), layout, signed)
    plan = make_plan(config(str(tmp_path / "in"), out), layout, signed, overwrite=True)  # signed: start again
    assert plan.overwrite and len(plan.pending) == 4


def test_output_inside_the_input_tree_and_trees_beside_shards_are_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    inside = tmp_path / "in/out"
    with pytest.raises(OutputConflictError, match="overlap"):
        make_plan(config(str(tmp_path / "in"), inside), OutputLayout(str(inside)))
    (tmp_path / "tars").mkdir()
    (tmp_path / "tars/a.tar").write_bytes(b"")
    both = config(f"{{{tmp_path / 'in'},{tmp_path / 'tars/a.tar'}}}", tmp_path / "out")
    with pytest.raises(ConfigError, match="one job reads either shards or trees of files"):
        check_inputs_fit(both, both.input_shards())


def test_a_folder_of_tars_in_subfolders_and_a_glob_of_folders_are_refused_as_trees(tmp_path: Path) -> None:
    (tmp_path / "in/train").mkdir(parents=True)
    (tmp_path / "in/train/part-0.tar").write_bytes(b"")
    with pytest.raises(ShardSpecError, match=r"holds shards in subfolders .* --input-format files"):
        expand_shards(str(tmp_path / "in"))
    assert [shard_name(u) for u in expand_shards(str(tmp_path / "in"), input_format="files")] == ["train.files"]
    with pytest.raises(ShardSpecError, match="INPUT names folders, not globs"):
        expand_shards(str(tmp_path / "*"), input_format="files")


@pytest.mark.parametrize(
    ("name", "payload", "found"),
    [
        ("a.zip", zipped("x.png", b"x"), "a ZIP archive"),
        ("a.gz", b"\x1f\x8b\x08\x00", "a gzip stream"),
        ("a.pdf", b"%PDF-1.7\n", "a PDF document"),
        ("a.mp4", b"\x00\x00\x00\x18ftypmp42", "an ISO media file"),
        ("a.bin", b"x" * 257 + b"ustar\x0000", "a tar archive"),
        ("a.txt", b"logo: iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB", "a picture written as text"),
        ("a.dat", b"head \xff\xd8\xff\xe0 tail", "a picture's signature"),
    ],
)
def test_a_file_that_may_hold_unscanned_pictures_is_named(name: str, payload: bytes, found: str) -> None:
    assert found in (unscanned_content(name, payload) or "")


def test_plain_files_and_pictures_are_not_refused_as_unscanned() -> None:
    assert unscanned_content("a.json", b'{"caption": "a cat"}') is None
    assert unscanned_content("a.png", png(np.zeros((4, 4, 3), np.uint8))) is None  # the detect stage scans it


def test_group_names_stand_for_their_folders_and_refuse_what_no_listing_gives() -> None:
    for folder in ("", "a", "a/b c", "x%2Fy", "a..b"):
        assert group_folder(group_name(folder)) == folder
    for planted in ("..%2F..%2Fetc.files", "%2Eraypipe.files", "a%2F%2Fb.files", "a/b.files", "%2E%2E.files"):
        with pytest.raises(FileTreeError):
            group_folder(planted)


def test_verify_finds_files_planted_beside_groups_links_and_a_linked_group_folder(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    finish(layout, make_plan(config(str(tmp_path / "in"), out), layout))
    sign_finalized(layout)
    assert verify_output(str(out), KEY).ok
    (out / "sub.files").write_bytes(b"named like a group")  # a file of the root group's folder: sample "sub"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/face.png").write_bytes(b"an original")
    (out / "sub/face.png").symlink_to(tmp_path / "elsewhere/face.png")
    (out / "originals").symlink_to(tmp_path / "in")
    found = {(p.kind, p.where) for p in verify_output(str(out), KEY).problems}
    assert {("extra", "%2E.files key=sub"), ("extra", "sub/face.png"), ("extra", "originals")} <= found

    moved = tmp_path / "moved"
    (out / "sub").rename(moved)
    (out / "sub").symlink_to(moved)  # the right files, reached through a link
    found = {(p.kind, p.where, p.detail.split(" (")[0]) for p in verify_output(str(out), KEY).problems}
    assert ("modified", "sub.files", "its folder is reached through a link") in found


def test_finalize_and_overwrite_touch_only_the_files_of_a_groups_samples(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    (out / "sub").mkdir(parents=True)
    (out / "README.md").write_bytes(b"the dataset card")  # the root group's folder is OUTPUT itself
    (out / "sub/coffee.txt").write_bytes(b"left by an earlier attempt")  # a file of the sample coffee
    finish(layout, make_plan(config(str(tmp_path / "in"), out), layout))
    assert not (out / "sub/coffee.txt").exists()  # coffee's sample does not release it now
    assert (out / "README.md").read_bytes() == b"the dataset card"
    make_plan(config(str(tmp_path / "in"), out, seed=5), layout, overwrite=True)  # deletes the results
    assert not (out / "astronaut.png").exists() and not (out / "sub/notes.txt").exists()
    assert (out / "README.md").read_bytes() == b"the dataset card"


def test_a_group_folder_that_is_a_link_is_never_written_through(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    out, victim = tmp_path / "out", tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_bytes(b"not raypipe's")
    (victim / "data.csv").write_bytes(b"not raypipe's either")
    out.mkdir()
    (out / "sub").symlink_to(victim)
    layout = OutputLayout(str(out))
    with pytest.raises(LinkedOutputError, match="is a symbolic link"):
        finish(layout, make_plan(config(str(tmp_path / "in"), out), layout))
    assert sorted(p.name for p in victim.iterdir()) == ["data.csv", "notes.txt"]
    assert (victim / "notes.txt").read_bytes() == b"not raypipe's"


def test_names_raypipe_cannot_carry_overlapping_folders_and_links_are_refused_or_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree(tmp_path / "in")
    os.mkdir(os.path.join(os.fsencode(tmp_path / "in"), b"caf\xe9"))
    (Path(os.fsdecode(os.path.join(os.fsencode(tmp_path / "in"), b"caf\xe9"))) / "a.jpg").write_bytes(b"x")
    with pytest.raises(ShardSpecError, match=r"is not a UTF-8 name; rename it"):
        expand_shards(str(tmp_path / "in"), input_format="files")
    make_tree(tmp_path / "in2")
    (tmp_path / "in2" / ("x" * 250)).mkdir()
    (tmp_path / "in2" / ("x" * 250) / "a.jpg").write_bytes(b"x")
    with pytest.raises(ShardSpecError, match=r"over the 200 its state files' names can take"):
        expand_shards(str(tmp_path / "in2"), input_format="files")

    make_tree(tmp_path / "in3")
    (tmp_path / "in3/sub/link.jpg").symlink_to(tmp_path / "in3/astronaut.png")
    with caplog.at_level("WARNING"):
        expand_shards(str(tmp_path / "in3"), input_format="files")
    assert "1 link(s) or special file(s) in the tree are not read and not copied ('sub/link.jpg')" in caplog.text
    both = config(f"{{{tmp_path / 'in3'},{tmp_path / 'in3/sub'}}}", tmp_path / "out")
    with pytest.raises(ConfigError, match="overlap; their files would be read and released twice"):
        make_plan(both, OutputLayout(str(tmp_path / "out")))


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("a.npy", b"\x93NUMPY\x01\x00v\x00{'descr': '|u1'}"),  # raw pixels
        ("a.z", zlib.compress(b"pixels" * 100)),  # compressed, with no magic of its own
        ("a.txt", "UTF-16 text".encode("utf-16")),
        ("a.json", b'{"jpeg": "ffd8ffe000104a46494600"}'),  # hex
        ("a.json", b'{"jpeg": "_9j_4AAQSkZJRgABAQAAAQ"}'),  # URL-safe base64
        ("a.json", b'{"jpeg": "\\/9j\\/4AAQSkZJRgABAQAAAQ"}'),  # JSON's escaped slashes
        ("a.json", b'{"bmp": "' + b"Qk02" + b"A" * 600 + b'"}'),  # base64 of a format with no known prefix
        ("a.txt", b" ".join(b"%02x" % (n % 256) for n in range(1100))),  # spaced hex
        ("a.csv", b"0," + b" ".join(b"%d" % (n % 256) for n in range(2304)) + b",Training\n"),  # pixels as numbers
        ("a.json", b'{"a": "DATA:IMAGE/png;base64,iVBO"}'),
        ("a.txt", b"Qk02" + b"QUFB" * 19 + b"\n" + b"QUFB" * 200),  # base64 wrapped at 76 columns
        ("a.txt", b"504b0304140000000800"),  # a ZIP in hex
        ("a.txt", b"255 216 255 224 0 16 74 70"),  # a JPEG's start in decimal, as od -tu1 writes it
        ("a.json", json.dumps(list(range(256)) * 5, indent=1).encode()),  # pixels, one per line
    ],
)
def test_binary_files_and_pictures_in_other_encodings_are_not_released(name: str, payload: bytes) -> None:
    assert unscanned_content(name, payload) is not None


def test_a_file_named_like_a_group_at_the_top_of_output_is_extra(tmp_path: Path) -> None:
    (tmp_path / "in/a").mkdir(parents=True)
    (tmp_path / "in/a/x.txt").write_bytes(b"x")
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    finish(layout, make_plan(config(str(tmp_path / "in"), out), layout))
    sign_finalized(layout)
    (out / "a.files").write_bytes(b"a group's name is no file of OUTPUT")
    assert [(p.kind, p.where) for p in verify_output(str(out), KEY).problems] == [("extra", "a.files")]


def test_plain_text_with_numbers_hashes_and_captions_is_released() -> None:
    labels = "\n".join(f"{i},{i % 7}" for i in range(2000)).encode()  # many numbers, a few per line
    caption = json.dumps({"caption": "a person smiling " * 40, "sha256": "ab" * 32}).encode()
    polygon = json.dumps({"segmentation": [[i + 0.5 for i in range(600)]], "bbox": [1, 2, 3, 4]}).encode()
    landmarks = json.dumps({"landmarks": [[i % 300, i * 7 % 300] for i in range(468)]}).encode()
    for text in (labels, caption, polygon, landmarks):
        assert unscanned_content("a.json", text) is None


def test_finalize_never_writes_a_member_name_that_is_no_file_of_its_sample(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in/a.txt").write_bytes(b"a")
    (tmp_path / "in/b.txt").write_bytes(b"b")
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    plan = make_plan(config(str(tmp_path / "in"), out), layout)
    tasks = list(shard_tasks(plan.pending[0], StorageOptions(), LimitsConfig()))
    for task in tasks[:2]:
        task.status, task.out_members = Status.NO_FACE, task.members
    tasks[1].out_members = [("../escaped.txt", b"planted")]  # as a planted fragment could
    commit_fragment(layout, "%2E.files", tasks, RUN)
    with pytest.raises(RuntimeError, match="is not a file name of it"):
        finalize_shard(layout, "%2E.files", source=plan.pending[0].uri)
    assert not (tmp_path / "escaped.txt").exists() and not (out / "a.txt").exists()  # checked before any write


def test_a_file_kept_in_output_is_extra_and_no_reason_to_redo_its_group(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    out = tmp_path / "out"
    layout = OutputLayout(str(out))
    finish(layout, make_plan(config(str(tmp_path / "in"), out), layout))
    (out / "README.md").write_bytes(b"the dataset card")
    (out / os.fsdecode(b"sub/\xff.txt")).write_bytes(b"a name that is not UTF-8")
    assert make_plan(config(str(tmp_path / "in"), out), layout).pending == []  # finalized: not redone
    sign_finalized(layout)
    found = {(p.kind, p.where) for p in verify_output(str(out), KEY).problems}
    assert found == {("extra", "%2E.files key=README"), ("extra", "sub.files '\\udcff.txt'")}


def test_long_file_names_and_hidden_tars_are_handled_at_the_plan(tmp_path: Path) -> None:
    make_tree(tmp_path / "in")
    (tmp_path / "in" / ("n" * 246 + ".txt")).write_bytes(b"x")
    with pytest.raises(ShardSpecError, match=r"over the 240 raypipe can write"):
        expand_shards(str(tmp_path / "in"))
    make_tree(tmp_path / "in2")
    (tmp_path / "in2/.cache").mkdir()
    (tmp_path / "in2/.cache/x.tar").write_bytes(b"")  # hidden: no part of the tree, no reason to refuse it
    assert len(expand_shards(str(tmp_path / "in2"))) == 3


@pytest.mark.parametrize(
    ("first", "second"),
    [("sub/Photo.jpg", "sub/photo.jpg"), ("Sub/a.jpg", "sub/b.jpg"), ("caf\u00e9.jpg", "cafe\u0301.jpg")],
)
def test_names_one_filesystem_would_merge_are_refused(first: str, second: str, tmp_path: Path) -> None:
    for name in (first, second):
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    with pytest.raises(ShardSpecError, match="differ only by case or Unicode normalization"):
        expand_shards(str(tmp_path / "in"), input_format="files")


def test_names_that_differ_by_more_than_case_an_unreadable_folder_and_a_hidden_tar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("Stra\u00dfe.txt", "Strasse.txt"):  # apart on NTFS and APFS too
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(b"x")
    (tmp_path / "in/.partial.tar").write_bytes(b"")  # hidden: no shard, no reason to read the folder as tars
    assert [shard_name(u) for u in expand_shards(str(tmp_path / "in"))] == ["%2E.files"]
    (tmp_path / "in/sub").mkdir()
    (tmp_path / "in/sub/a.txt").write_bytes(b"x")
    scandir = os.scandir

    def refusing(path):  # type: ignore[no-untyped-def]
        if str(path).endswith("/sub"):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(ShardSpecError, match=r"sub: cannot be listed \(Permission denied\)"):
        expand_shards(str(tmp_path / "in"))


def test_groups_of_two_inputs_that_differ_only_by_case_are_refused(tmp_path: Path) -> None:
    for name in ("a/Photos/x.jpg", "b/photos/y.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    both = config(f"{{{tmp_path / 'a'},{tmp_path / 'b'}}}", tmp_path / "out")
    with pytest.raises(ConfigError, match=r"'Photos\.files' and 'photos\.files' differ only by case"):
        make_plan(both, OutputLayout(str(tmp_path / "out")))
