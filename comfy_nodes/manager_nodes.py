"""ICTHPModelManager: check or download the reward models into ComfyUI's models/icthp (manifest-verified)."""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io, ui

from icthp_core.checkpoints.manager import fetch, load_manifest, summary

from .paths import FOLDER, register_model_folder
from .reward_nodes import CATEGORY

ACTIONS = ["check (offline)", "download"]


def model_choices() -> list[str]:
    return ["ict+hp", "all", *load_manifest()]


def target_dir() -> str:
    """The first ``models/icthp`` folder (ComfyUI's own unless extra_model_paths.yaml puts another first)."""
    register_model_folder()
    return folder_paths.get_folder_paths(FOLDER)[0]


class ICTHPModelManager(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPModelManager",
            display_name="ICT-HP Model Manager",
            category=CATEGORY,
            description="Lists which reward-model files are present in models/icthp (offline), or downloads the "
            "missing ones from the hub and verifies size and SHA-256 against the pack's manifest.",
            is_output_node=True,
            not_idempotent=True,
            inputs=[
                io.Combo.Input("models", options=model_choices(), default="ict+hp"),
                io.Combo.Input("action", options=ACTIONS, default=ACTIONS[0]),
                io.Boolean.Input("convert_to_safetensors", default=False, tooltip="also write .safetensors copies"),
            ],
            outputs=[io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, models, action, convert_to_safetensors=False) -> io.NodeOutput:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; choose one of {ACTIONS}")
        names = ["ict", "hp"] if models == "ict+hp" else [models]
        root = target_dir()
        reports = fetch(names, root, offline=True if action == ACTIONS[0] else None, convert=convert_to_safetensors)
        text = f"models/icthp = {root}\n" + "\n".join(r.line() for r in reports) + f"\n{summary(reports)}"
        return io.NodeOutput(text, ui=ui.PreviewText(text))
