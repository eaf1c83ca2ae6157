"""Manifests: Kaggle STRIP AI files read as they are; every bad row is one clear error."""

from __future__ import annotations

import pytest

from clotclf_core.plugin import ClotclfError
from clotclf_core.slides.manifest import ManifestError, manifest_from_files, read_manifest

TRAIN_CSV = """image_id,center_id,patient_id,image_num,label
006388_0,11,006388,0,CE
008e5c_0,11,008e5c,0,CE
00c058_0,11,00c058,0,LAA
01adc5_0,11,01adc5,0,LAA
026c97_0,4,026c97,0,CE
028989_0,7,028989,0,CE
028989_1,7,028989,1,CE
"""

OTHER_CSV = """image_id,patient_id,image_num,other_specified,label
01f2b3_0,01f2b3,0,,Unknown
01f2b3_1,01f2b3,1,,Unknown
02ebd5_0,02ebd5,0,Hypercoagulable,Other
"""


def write(tmp_path, text, name="m.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_kaggle_train_csv_reads_as_is(tmp_path):
    df = read_manifest(write(tmp_path, TRAIN_CSV))
    assert list(df.columns[:4]) == ["image_id", "patient_id", "center_id", "label"]
    assert "image_num" in df.columns  # extra columns kept
    assert len(df) == 7
    assert df.loc[df.image_id == "028989_1", "patient_id"].item() == "028989"
    assert df.loc[df.image_id == "026c97_0", "center_id"].item() == "4"
    assert df["label"].value_counts().to_dict() == {"CE": 5, "LAA": 2}
    assert df.attrs["notes"] == []


def test_kaggle_other_csv_with_configured_labels(tmp_path):
    path = write(tmp_path, OTHER_CSV)
    with pytest.raises(ManifestError, match="label 'Unknown'.*allowed labels are CE, LAA"):
        read_manifest(path)
    df = read_manifest(path, labels=("Other", "Unknown"))
    assert list(df["center_id"]) == ["", "", ""]  # no center_id column -> ""
    assert df.loc[2, "other_specified"] == "Hypercoagulable"


def test_missing_patient_id_falls_back_to_image_id_and_says_so(tmp_path, caplog):
    df = read_manifest(write(tmp_path, "image_id,label\na,CE\nb,LAA\n"))
    assert list(df["patient_id"]) == ["a", "b"]
    assert "own patient" in df.attrs["notes"][0]
    assert "own patient" in caplog.text
    assert "PATIENT LEAKAGE POSSIBLE" in df.attrs["notes"][0] and df.attrs["patients_from_image_id"] == {"a", "b"}
    df = read_manifest(write(tmp_path, "image_id,patient_id,label\na,,CE\nb,p1,LAA\n", "m2.csv"))
    assert list(df["patient_id"]) == ["a", "p1"] and df.attrs["patients_from_image_id"] == {"a"}


@pytest.mark.parametrize("text, match", [
    ("image_id\tlabel\na\tCE\n", "tab-separated, not comma-separated"),
    ("image_id;label\na;CE\n", "semicolon-separated"),
    ("image_id,patient_id,label\na,p1,CE\nb,p,2,LAA\n", "line 3 has 4 fields but the header has 3"),
])
def test_separator_and_field_count_are_named(tmp_path, text, match):
    with pytest.raises(ManifestError, match=match):
        read_manifest(write(tmp_path, text))


def test_labels_optional_for_prediction(tmp_path):
    path = write(tmp_path, "image_id,patient_id\na,p\nb,p\n")
    with pytest.raises(ManifestError, match="no 'label' column"):
        read_manifest(path)
    df = read_manifest(path, require_labels=False)
    assert list(df["label"]) == ["", ""]
    # empty cells allowed without require_labels, but a typo is still an error
    path = write(tmp_path, "image_id,label\na,\nb,LA\n", "m2.csv")
    with pytest.raises(ManifestError, match=r"line 3 .*'b'.*label 'LA'"):
        read_manifest(path, require_labels=False)
    with pytest.raises(ManifestError, match=r"line 2 .*empty label"):
        read_manifest(write(tmp_path, "image_id,label\na,\n", "m3.csv"))


@pytest.mark.parametrize(
    "text, match",
    [
        ("patient_id,label\np,CE\n", r"no 'image_id' column \(columns: patient_id, label\)"),
        ("image_id,label\n", "header but no rows"),
        ("", "is empty"),
        ("image_id,label\na,CE\nb,LAA\na,LAA\n", r"line 4: image_id 'a' already appears on line 2"),
        ("image_id,patient_id,label\na,p1,CE\nb,p1,LAA\n", r"patient 'p1' has slides with different labels \(line 2 'CE', line 3 'LAA'\)"),
        ("image_id,label\n../etc,CE\n", "cannot name a file"),
        ("image_id,label\n,CE\n", "line 2: empty image_id"),
        ("image_id,label\na,ce\n", "label 'ce'; allowed labels are CE, LAA"),
    ],
)
def test_bad_manifests(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ManifestError, match=match) as info:
        read_manifest(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ClotclfError)
    assert "\n" not in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ManifestError, match="does not exist.*--manifest"):
        read_manifest(tmp_path / "nope.csv")
    with pytest.raises(ManifestError, match="is a folder"):
        read_manifest(tmp_path)


def test_whitespace_and_bom_tolerated(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeffimage_id, label \n a , CE\n".encode("utf-8"))
    df = read_manifest(path)
    assert df.loc[0, "image_id"] == "a" and df.loc[0, "label"] == "CE"


def test_manifest_from_files(tmp_path):
    df = manifest_from_files([tmp_path / "b.tif", tmp_path / "a.svs"])
    assert list(df["image_id"]) == ["a", "b"] and list(df["label"]) == ["", ""]
    assert list(df["patient_id"]) == ["a", "b"]
    with pytest.raises(ManifestError, match="would both get image_id 'a'"):
        manifest_from_files([tmp_path / "a.tif", tmp_path / "a.svs"])
    assert len(manifest_from_files([])) == 0
