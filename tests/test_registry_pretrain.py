"""The registry and `clotclf pretrain`'s run directories (`kind: backbone`): push, pull (every file
verified, the backbone built on the meta device), and the run pulled used as a backbone; and what
a push refuses to publish: weights trained from an encoder whose licence forbids it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

from test_registry import Registry, reg  # noqa: E402,F401 - the hub|local fixture
from test_pretrain import settings  # noqa: E402
from tilesets import make_tileset  # noqa: E402

from clotclf_core.plugin import CONFIG_NAME, WEIGHTS_NAME  # noqa: E402
from clotclf_registry.errors import RegistryError  # noqa: E402
from clotclf_registry.verify import check_redistribution  # noqa: E402


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory):
    from clotclf_core.training.pretrain import pretrain

    root = tmp_path_factory.mktemp("ssl")
    tiles = make_tileset(root / "tiles", sizes=(6, 5, 7, 4))
    pretrain(settings(tiles, root / "run", method="simclr", epochs=1), progress=False)
    return root / "run"


def test_a_pretrained_backbone_is_pushed_pulled_and_used(reg: Registry, ssl_run):  # noqa: F811
    from clotclf_core.features.encoder import build_encoder

    pushed = reg.push(ssl_run, repo="ssl", tag="v1")
    assert pushed.files == ["README.md", CONFIG_NAME, "history.csv", "metrics.json", WEIGHTS_NAME]
    pulled = reg.pull("ssl@v1")
    path = Path(pulled.path)
    assert (path / WEIGHTS_NAME).read_bytes() == (ssl_run / WEIGHTS_NAME).read_bytes()
    assert [(n["role"], n["name"], n["installed"]) for n in pulled.needs] == [("backbone", "timm", True)]
    config = json.loads((path / CONFIG_NAME).read_text())
    assert config["kind"] == "backbone" and config["tilesets"][0]["path"] == "tiles"  # the local path redacted
    card = (path / "README.md").read_text()
    assert "self-supervised" in card and "kind: backbone" in card
    ours, theirs = build_encoder(f"run:{ssl_run}", device="cpu"), build_encoder(f"run:{path}", device="cpu")
    assert ours.weights_sha256 == theirs.weights_sha256


def test_weights_of_a_no_redistribution_encoder_are_never_pushed(tmp_path):
    restricted = {"model": {"backbone": "uni2-h", "backbone_options": {"pretrained": True}}}
    with pytest.raises(RegistryError, match=r"trained from the published encoder 'uni2-h' \(CC-BY-NC-ND-4.0, MahmoodLab/UNI2-h\)"
                                            r".*A MIL model on that encoder's features"):
        check_redistribution(tmp_path, restricted)
    check_redistribution(tmp_path, {"model": {"backbone": "uni2-h", "backbone_options": {"pretrained": False}}})  # random init
    check_redistribution(tmp_path, {"model": {"backbone": "h-optimus-0", "backbone_options": {"pretrained": True}}})  # Apache
    mil = {"model": {"kind": "mil", "aggregator": "abmil", "encoder": {"backbone": "uni2-h", "options": {"pretrained": True}}}}
    check_redistribution(tmp_path, mil)  # features only: the encoder's weights are not part of the model
    ssl = {"kind": "backbone", "backbone": "virchow2", "encoder": {"licence": "CC-BY-NC-ND-4.0 (trained on from paige-ai/"
                                                                         "Virchow2)", "redistribution": "no"}}
    with pytest.raises(RegistryError, match="'virchow2'"):
        check_redistribution(tmp_path, ssl)
