"""The ``InferClass`` Auto3DSeg's ensembler calls: the trained C2FNAS network through the bundle's inference config.

``infer(image_file)`` returns the class probabilities ``(classes, *S)`` in the input image's own space (a
``MetaTensor`` with its affine): the bundle's ``inference.json`` preprocessing, network, sliding-window inferer
and, of its postprocessing, the finiteness check, softmax and ``Invertd``. Auto3DSeg averages these over the
ensemble and takes the argmax.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# this template's train.py, beside this file
from train import SETTINGS, bundle_importable, hyper_parameters, stage_chain  # noqa: E402


class InferClass:
    def __init__(self, config_file: Union[str, Sequence[str]], **override: Any):
        parser = hyper_parameters(
            [c for c in ([config_file] if isinstance(config_file, str) else config_file) if c.endswith("yaml")],
            {k: v for k, v in override.items() if k in SETTINGS},
        )
        bundle_root, algo_dir = Path(parser["bundle_root"]), Path(parser["algo_dir"])
        bundle_importable(bundle_root)
        out = algo_dir / "outputs"
        used = json.loads((out / "c2fnas_run.json").read_text())  # the layers and overrides train.py ran with
        chain = stage_chain(bundle_root)
        inference = chain.stage("inference")  # the bundle's layers and hand-offs (searched architecture, weights)
        files = chain.config_files(inference.name, bundle_root, used["layers"])
        config = ConfigParser(ConfigParser.load_config_files(files))
        for key, value in {**used["overrides"], **inference.handoff}.items():
            config[key] = value
        self.device = config.get_parsed_content("device")
        self.preprocessing = config.get_parsed_content("preprocessing")
        self.network = config.get_parsed_content("network").eval()
        checkpoint = torch.load(config.get_parsed_content("ckpt_file"), map_location=self.device, weights_only=True)
        self.network.load_state_dict(checkpoint.get("model", checkpoint))
        self.inferer = config.get_parsed_content("inferer")
        post = config.get_parsed_content("postprocessing").transforms
        self.postprocessing = Compose(list(post[:3]))  # CheckFinited, softmax, Invertd (not argmax, not saving)

    @torch.no_grad()
    def infer(self, image_file: Union[str, dict]) -> torch.Tensor:
        data = self.preprocessing({"image": image_file} if isinstance(image_file, str) else dict(image_file))
        image = data["image"].to(self.device)
        data["pred"] = self.inferer(image[None], self.network)[0]
        return self.postprocessing(data)["pred"]
