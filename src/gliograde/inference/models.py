"""The model to predict with: a Lightning checkpoint (with Grad-CAM) or an exported ONNX folder
(run with onnxruntime, without Lightning). Both carry their input contract."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from gliograde.data.discovery.identity import recorded_training_patients
from gliograde.errors import GliogradeError
from gliograde.inference.calibration import file_sha256
from gliograde.inference.tta import views
from gliograde.models.patient_scores import slice_log_probs
from gliograde.files.sealed import read_sealed

ONNX_FILE = "model.onnx"
CARD_FILE = "model_card.json"


class ModelSourceError(GliogradeError, ValueError):
    """The checkpoint, run directory or export folder cannot be used."""


def find_checkpoint(run: Path, which: str = "best", kind: str = "classifier") -> Path:
    """``best``: the run's one monitored checkpoint (``epoch_*.ckpt``, kept with save_top_k=1),
    looked up in the run directory itself so that a copied run uses its own files. A run whose
    config.yaml trained another ``kind`` of model (``task=segment``: a segmenter) is refused."""
    from gliograde.contract.input_contract import refuse_kind

    found = _run_kind(run)
    if found is not None:
        refuse_kind({"kind": found}, kind, str(run))
    folder = run / "checkpoints"
    if which == "last":
        path = folder / "last.ckpt"
    elif which == "best":
        best = sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith("last"))
        if len(best) != 1:
            found = ", ".join(p.name for p in best) or "none"
            raise ModelSourceError(
                f"{folder}: expected one best checkpoint besides last.ckpt, found {found}; pass ckpt=PATH or ckpt=last"
            )
        path = best[0]
    else:
        path = Path(which)
    if not path.is_file():
        raise ModelSourceError(f"{path}: checkpoint not found (ckpt=best|last|PATH)")
    return path


def _run_kind(run: Path) -> str | None:
    """``segmenter`` for a run trained with ``task=segment``, ``classifier`` for any other run,
    None without a readable config.yaml."""
    import yaml

    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None  # no readable config: the checkpoint's contract decides
    if not isinstance(config, dict):
        return None
    return "segmenter" if config.get("task") == "segment" else "classifier"


def load_network(stored: dict[str, Any]):
    """The backbone of a loaded GradeClassifier checkpoint, in eval mode, without Lightning.

    ``GradeClassifier.forward`` is the backbone's forward; building the backbone alone spares
    importing Lightning and torchmetrics, most of a one-patient prediction's start-up.
    """
    from gliograde.models.backbones import create_backbone

    hparams = stored.get("hyper_parameters")
    state = stored.get("state_dict")
    if not hparams or state is None or "backbone" not in hparams:
        raise ModelSourceError("not a gliograde training checkpoint (no hyper_parameters/state_dict)")
    net = create_backbone(
        hparams["backbone"],
        int(hparams["in_channels"]),
        int(hparams["num_classes"]),
        None,  # the checkpoint holds every weight
        hparams.get("stem_stride"),
    )
    net.load_state_dict({k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")})
    return net.eval()


class TorchModel:
    """A GradeClassifier checkpoint's network on the CPU (or GPU), with its contract."""

    kind = "checkpoint"

    def __init__(self, path: Path):
        import torch
        from omegaconf import OmegaConf

        from gliograde.config.legacy_targets import current_targets
        from gliograde.contract.input_contract import check_model, read_checkpoint_contract, refuse_kind
        from gliograde.models.backbones import cam_layer

        self.path = path
        # the run whose recipe.json and export belong to this checkpoint (None: a lone file)
        self.run = path.parent.parent if path.parent.name == "checkpoints" else None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            stored = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as exc:
            raise ModelSourceError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
        self.training_patients = recorded_training_patients(stored)
        run_config = path.parent.parent / "config.yaml"
        run_cfg = current_targets(OmegaConf.load(run_config)) if run_config.is_file() else None
        source = str(self.run or path)
        if "input_contract" not in stored and run_cfg is not None and "input_contract" in run_cfg:
            self.contract = OmegaConf.to_container(run_cfg.input_contract, resolve=True)
            refuse_kind(self.contract, "classifier", source)
        else:
            self.contract = read_checkpoint_contract(
                stored, None if run_cfg is None else run_cfg.data, source=source
            )
        try:
            self.model = load_network(stored).to(self.device)
        except ModelSourceError as err:
            raise ModelSourceError(f"{path}: {err}") from None
        hparams = stored["hyper_parameters"]
        self.classes = [str(c) for c in hparams["class_names"]]
        self.hparams = hparams
        check_model(self.contract, int(hparams["in_channels"]), self.classes)
        self.cam_layer = cam_layer(self.model, hparams["backbone"])

    def log_probabilities(
        self, images: np.ndarray, batch_size: int, tta: str = "none", temperature: float = 1.0
    ) -> np.ndarray:
        """Class log-probabilities ``[N, K]`` (float64) of float16 slices ``[N, C, H, W]``: the log
        of the TTA views' mean of ``softmax(logits / temperature)``, computed from the logits as
        every command computes them (:func:`gliograde.models.patient_scores.slice_log_probs`)."""
        import torch

        logits = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(images[start : start + batch_size]).to(self.device).float()
                stacked = torch.stack([self.model(view).float() for view in views(batch, tta)], dim=1)
                logits.append(stacked.cpu().numpy())
        return slice_log_probs(np.concatenate(logits), temperature)

    def probabilities(
        self, images: np.ndarray, batch_size: int, tta: str = "none", temperature: float = 1.0
    ) -> np.ndarray:
        """Class probabilities ``[N, K]``: the exp of :meth:`log_probabilities`."""
        return np.exp(self.log_probabilities(images, batch_size, tta, temperature))

    def grad_cam(self, image: np.ndarray, target: int) -> np.ndarray:
        """Grad-CAM heat map ``[H, W]`` of one slice for class ``target``."""
        import torch

        from gliograde.evaluation.gradcam import grad_cam

        batch = torch.from_numpy(image[None]).float().to(self.device)
        return grad_cam(self.model, self.cam_layer, batch, target)[0].cpu().numpy()


class OnnxModel:
    """An exported folder: ``model.onnx`` (probabilities) and ``model_card.json`` (the contract)."""

    kind = "onnx"

    def __init__(self, folder: Path):
        card = read_card(folder)
        self.path = folder / ONNX_FILE
        check_onnx_file(self.path, card)
        self.contract = card["input_contract"]
        self.classes = list(self.contract["classes"])
        self.session = onnx_session(self.path, _reexport(card), ModelSourceError)
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [output.name for output in self.session.get_outputs()]
        self.card = card

    def log_probabilities(
        self, images: np.ndarray, batch_size: int, tta: str = "none", temperature: float = 1.0
    ) -> np.ndarray:
        """Class log-probabilities ``[N, K]`` (float64), from the exported logits, averaged over
        the TTA views at ``temperature``, as :class:`TorchModel` computes them."""
        out = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].astype(np.float32)
            out.append(np.stack([self._logits(view) for view in views(batch, tta)], axis=1))
        return slice_log_probs(np.concatenate(out), temperature)

    def probabilities(
        self, images: np.ndarray, batch_size: int, tta: str = "none", temperature: float = 1.0
    ) -> np.ndarray:
        """Class probabilities ``[N, K]``: the exp of :meth:`log_probabilities`."""
        return np.exp(self.log_probabilities(images, batch_size, tta, temperature))

    def _logits(self, batch: np.ndarray) -> np.ndarray:
        if "logits" in self.outputs:
            return self.session.run(["logits"], {self.input_name: batch})[0]
        # An export without a logits output: log-probabilities differ from logits by a constant
        # per slice, which softmax(. / T) ignores.
        probs = self.session.run(None, {self.input_name: batch})[0]
        return np.log(np.clip(probs, np.finfo(np.float32).tiny, None))

    grad_cam = None  # gradients need the PyTorch model


def onnx_session(path: Path, redo: str, error: type[Exception]):
    """An onnxruntime CPU session of ``path``; a graph onnxruntime cannot load is one line
    (``error``) saying what it reported and how to make it again (``redo``)."""
    import onnxruntime
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.NoSuchFile, ort_errors.Fail) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise error(f"{path}: onnxruntime cannot load it ({first}); {redo}") from None


def _reexport(card: dict[str, Any] | None) -> str:
    """How to make a sound export again, naming the run (or checkpoint) it came from when known."""
    source = None
    if isinstance(card, dict):
        source = (card.get("training") or {}).get("run_dir") or (card.get("model") or {}).get("checkpoint")
    return f"re-export the model (python -m gliograde.export {source or 'RUN'})"


def read_card(folder: Path) -> dict[str, Any]:
    """An export's ``model_card.json``, checked against its own checksum: an edited card (its
    modalities, classes, recipe) or an unreadable one is one line, never used."""
    card = read_sealed(Path(folder) / CARD_FILE, _reexport(None))
    missing = [key for key in ("input_contract", "model") if not isinstance(card.get(key), dict)]
    if missing or not isinstance(card["model"].get("onnx"), dict):
        absent = missing or ["model.onnx"]
        raise ModelSourceError(f"{Path(folder) / CARD_FILE}: not a model card (no {absent})")
    return card


def check_onnx_file(path: Path, card: dict[str, Any]) -> None:
    """``model.onnx`` must be the graph the card was written for (its ``onnx_sha256``): a swapped,
    truncated or damaged graph is refused before onnxruntime reads it."""
    expected = card["model"]["onnx"].get("onnx_sha256")
    actual = file_sha256(path)
    if actual != expected:
        raise ModelSourceError(
            f"{path}: its sha256 {actual[:12]}... is not the model card's onnx_sha256 "
            f"{str(expected)[:12]}... (replaced, truncated or damaged since export); {_reexport(card)}"
        )


def open_model(source: str | Path, follow_recipe: bool = True) -> TorchModel | OnnxModel:
    """``ckpt=``: a checkpoint file, a run directory (the checkpoint of its recipe, else its best)
    or an export folder. ``follow_recipe=False`` (``recipe=none``) ignores the run's recipe."""
    from gliograde.inference.recipe import read_recipe, recipe_checkpoint

    path = Path(source).expanduser()
    if path.is_dir() and (path / ONNX_FILE).is_file() and (path / CARD_FILE).is_file():
        return OnnxModel(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        recipe = read_recipe(path) if follow_recipe else None
        return TorchModel(recipe_checkpoint(path, recipe) if recipe else find_checkpoint(path))
    if path.is_file():
        return TorchModel(path)
    raise ModelSourceError(
        f"ckpt={source}: not a checkpoint file, a run directory (with checkpoints/) or an export folder "
        f"(with {ONNX_FILE} and {CARD_FILE})"
    )
