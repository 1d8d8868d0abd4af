"""Grounded-SAM2 backend of stage "reference_masks" (paper profile, Appendix A).

Grounding DINO finds boxes for the caption's object names on frame 0; SAM2 turns each box into a
mask; the masks become one instance label map, best detection first. Both models run through
transformers. Without torchvision, `Sam2Processor` does not load, so SAM2's pre- and post-processing
is written out here (resize to the model's square input, ImageNet normalisation, box scaling, mask
upsampling and thresholding at 0); Grounding DINO uses its PIL image processor.

Boxes are in continuous image coordinates of the 448x256 frame: x in [0, 448], y in [0, 256], pixel
column u spanning [u, u + 1). Both models use this convention (the repo's pixel-centre u is x - 0.5).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pointvid_pipeline.clip import Clip
from pointvid_pipeline.rejections import BackendUnavailable

logger = logging.getLogger(__name__)

DEFAULT_GROUNDING_DINO_MODEL = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SAM2_MODEL = "facebook/sam2.1-hiera-small"
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass
class Detections:
    """Grounding DINO's boxes on one image, sorted by descending score."""

    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in continuous frame coordinates
    scores: np.ndarray  # (N,) float32
    phrases: list[str]  # the prompt words each box was matched to (for logs)


def build_prompt(objects: list[str]) -> str:
    """Grounding DINO's text format: lower-case phrases, each ending with a dot ("dog. woman.").

    Dots inside a name would split it into two phrases, so they are dropped; duplicates are merged.
    """
    phrases: list[str] = []
    for name in objects:
        phrase = " ".join(name.replace(".", " ").lower().split())
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return " ".join(f"{phrase}." for phrase in phrases)


def detections_from_outputs(processor, outputs, input_ids, box_threshold: float, text_threshold: float,
                            image_sizes: list[tuple[int, int]]) -> list[Detections]:
    """Per image of the batch: boxes scored above `box_threshold`, mapped from normalised (cx, cy, w, h) to
    that image's (height, width) frame and clipped to it.

    `input_ids` is the padded (B, L) batch the detector saw: post-processing reads row i for image i's
    phrases, and padding tokens never match (the detector sets their logits to -inf). Boxes that
    clipping leaves without area are dropped (they point outside the image).
    """
    results = processor.post_process_grounded_object_detection(
        outputs, input_ids, threshold=box_threshold, text_threshold=text_threshold, target_sizes=image_sizes
    )
    detections = []
    for result, (height, width) in zip(results, image_sizes, strict=True):
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
        scores = result["scores"].float().cpu().numpy()
        boxes = np.clip(boxes, 0.0, [width, height, width, height]).astype(np.float32)
        has_area = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        order = [index for index in np.argsort(-scores, kind="stable") if has_area[index]]
        detections.append(Detections(boxes[order], scores[order].astype(np.float32),
                                     [result["text_labels"][index] for index in order]))
    return detections


def no_detections() -> Detections:
    return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])


def sam2_pixel_values(image: np.ndarray, size: int) -> np.ndarray:
    """(1, 3, size, size) float32: the RGB uint8 image stretched to SAM2's square input, ImageNet-normalised."""
    resized = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    return ((resized - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None]


def sam2_boxes(boxes: np.ndarray, height: int, width: int, size: int) -> np.ndarray:
    """Frame boxes scaled like the image (size/W on x, size/H on y) into SAM2's input coordinates."""
    return (boxes * np.array([size / width, size / height, size / width, size / height], np.float32)).astype(np.float32)


def select_best_masks(mask_logits: np.ndarray, iou_scores: np.ndarray) -> np.ndarray:
    """(nbox, h, w): per box, the candidate mask with the highest predicted IoU.

    mask_logits (nbox, M, h, w), iou_scores (nbox, M); M = 1 (single output) or 3 (multimask output).
    """
    best = np.argmax(iou_scores, axis=1)
    return mask_logits[np.arange(len(mask_logits)), best]


def masks_to_frame(mask_logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(nbox, height, width) bool: low-resolution logits upsampled bilinearly to the frame, thresholded at 0."""
    if len(mask_logits) == 0:
        return np.zeros((0, height, width), bool)
    upsampled = [cv2.resize(logits.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
                 for logits in mask_logits]
    return np.stack(upsampled) > 0.0


def merge_instance_masks(masks: np.ndarray, scores: np.ndarray, min_area: int, max_instances: int) -> np.ndarray:
    """(H, W) int32 label map: instances 1..K by descending score; overlaps go to the higher score.

    A mask keeps only the pixels no better-scoring mask claimed; if fewer than `min_area` remain
    (a speck, or a near-duplicate of a better detection) it is dropped and the labels stay contiguous.
    """
    labels = np.zeros(masks.shape[1:], np.int32)
    next_label = 1
    for index in np.argsort(-scores, kind="stable"):
        if next_label > max_instances:
            break
        claimed = masks[index] & (labels == 0)
        if claimed.sum() >= min_area:
            labels[claimed] = next_label
            next_label += 1
    return labels


def local_model_dir(model: str, env_var: str, hub_id: str) -> Path | None:
    """The folder `model` names, None for a hub id; BackendUnavailable for a path that does not exist."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    looks_like_path = path.is_absolute() or model.startswith((".", "~")) or model.count("/") != 1
    if looks_like_path:
        raise BackendUnavailable(
            f"model folder {model!r} (from {env_var}) does not exist; download the weights with "
            f"`huggingface-cli download {hub_id} --local-dir <folder>` on a machine with internet and set {env_var} to that folder"
        )
    return None


def model_provenance(model: str, folder: Path | None) -> str:
    """Model id or path, plus a short hash of config.json for local folders (same path, other weights → other version)."""
    if folder is None or not (folder / "config.json").exists():
        return model
    digest = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()[:10]
    return f"{model}@config-{digest}"


def unavailable(model: str, env_var: str, hub_id: str, exc: Exception) -> BackendUnavailable:
    return BackendUnavailable(
        f"cannot load {model!r} (from {env_var}): {type(exc).__name__}: {exc}. Get the weights with "
        f"`huggingface-cli download {hub_id} --local-dir <folder>` on a machine with internet (or into the HF cache) "
        f"and set {env_var} to that folder"
    )


def load_grounding_dino_processor(model: str):
    """Tokenizer + the PIL image processor: the default one needs torchvision, the PIL one gives the same pixels."""
    from transformers import AutoTokenizer, GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    return GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessorPil.from_pretrained(model), tokenizer=AutoTokenizer.from_pretrained(model)
    )


@dataclass
class GroundedSam2Segmenter:
    """Open-vocabulary instance masks on frame 0: Grounding DINO boxes for the object names, SAM2 masks per box.

    Batched over clips: one Grounding DINO forward for all reference frames of a batch (each with its
    own prompt), one SAM2 image-encoder pass for all frames that have boxes, then SAM2's decoder once
    per frame with all of its boxes. A clip's map does not depend on the other clips of its batch.
    Detections beyond `max_instances` (lowest scores) are not segmented. The phrase each instance matched is
    logged, not returned: the stage protocol carries only the label map.
    """

    grounding_dino_model: str = DEFAULT_GROUNDING_DINO_MODEL
    sam2_model: str = DEFAULT_SAM2_MODEL
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    max_instances: int = 16
    min_instance_fraction: float = 0.001  # masks covering less of the frame than this are dropped
    device: str = ""
    name: str = "grounded-sam2"
    version: str = ""

    @classmethod
    def from_env(cls) -> GroundedSam2Segmenter:
        env = os.environ
        return cls(
            grounding_dino_model=env.get("POINTVID_GROUNDING_DINO_MODEL", DEFAULT_GROUNDING_DINO_MODEL),
            sam2_model=env.get("POINTVID_SAM2_MODEL", DEFAULT_SAM2_MODEL),
            box_threshold=float(env.get("POINTVID_BOX_THRESHOLD", "0.35")),
            text_threshold=float(env.get("POINTVID_TEXT_THRESHOLD", "0.25")),
            max_instances=int(env.get("POINTVID_MAX_INSTANCES", "16")),
        )

    def setup(self) -> None:
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, Sam2Model

        from pointvid_pipeline.backends.torch_runtime import resolve_device, resolve_dtype

        dino_folder = local_model_dir(self.grounding_dino_model, "POINTVID_GROUNDING_DINO_MODEL", DEFAULT_GROUNDING_DINO_MODEL)
        sam2_folder = local_model_dir(self.sam2_model, "POINTVID_SAM2_MODEL", DEFAULT_SAM2_MODEL)
        self.device = resolve_device()
        self._dtype = resolve_dtype(self.device)
        try:
            self._processor = load_grounding_dino_processor(self.grounding_dino_model)
            self._detector = AutoModelForZeroShotObjectDetection.from_pretrained(
                self.grounding_dino_model, dtype=self._dtype
            ).to(self.device).eval()
        except OSError as exc:
            raise unavailable(self.grounding_dino_model, "POINTVID_GROUNDING_DINO_MODEL", DEFAULT_GROUNDING_DINO_MODEL, exc) from exc
        try:
            self._segmenter = Sam2Model.from_pretrained(self.sam2_model, dtype=self._dtype).to(self.device).eval()
        except OSError as exc:
            raise unavailable(self.sam2_model, "POINTVID_SAM2_MODEL", DEFAULT_SAM2_MODEL, exc) from exc
        self._sam2_size = int(self._segmenter.config.prompt_encoder_config.image_size)
        self.version = (
            f"gdino={model_provenance(self.grounding_dino_model, dino_folder)};"
            f"sam2={model_provenance(self.sam2_model, sam2_folder)};"
            f"box>{self.box_threshold};text>{self.text_threshold};torch{torch.__version__}"
        )

    def segment(self, clips: list[Clip], objects: list[list[str]]) -> list[np.ndarray]:
        """One (H, W) int32 label map on frame 0 per clip, in order; a clip with no object names gets zeros."""
        if len(clips) != len(objects):
            raise ValueError(f"{len(clips)} clips but {len(objects)} object lists")
        images = [clip.frames[0] for clip in clips]
        detections = self.detect(images, objects)
        for clip, names, found in zip(clips, objects, detections):
            logger.info("%s: %d detections for %r: %s", clip.key, len(found.scores), build_prompt(names),
                        ", ".join(f"{phrase}:{score:.2f}" for phrase, score in zip(found.phrases, found.scores)))
        masks = self.masks_for_boxes(images, [found.boxes[:self.max_instances] for found in detections])
        labels = []
        for image, found, image_masks in zip(images, detections, masks):
            height, width = image.shape[:2]
            min_area = max(1, int(self.min_instance_fraction * height * width))
            scores = found.scores[:self.max_instances]
            labels.append(merge_instance_masks(image_masks, scores, min_area, self.max_instances))
        return labels

    def detect(self, images: list[np.ndarray], objects: list[list[str]]) -> list[Detections]:
        """Grounding DINO on RGB uint8 images, each with its own object names, in one forward pass.

        Boxes per image in that image's frame, best first. Images whose names make an empty prompt
        get no detections and stay out of the batch. Prompts are padded to the longest; the padding
        is masked inside the detector (attention and logits), so an image's detections do not
        depend on the other prompts of the batch.
        """
        import torch

        prompts = [build_prompt(names) for names in objects]
        detections = [no_detections() for _ in images]
        batch = [index for index, prompt in enumerate(prompts) if prompt]
        if not batch:
            return detections
        inputs = self._processor(images=[images[index] for index in batch], text=[prompts[index] for index in batch],
                                 padding="longest", return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        with torch.inference_mode():
            outputs = self._detector(**inputs)
        outputs.logits, outputs.pred_boxes = outputs.logits.float(), outputs.pred_boxes.float()
        image_sizes = [images[index].shape[:2] for index in batch]
        found = detections_from_outputs(self._processor, outputs, inputs["input_ids"], self.box_threshold,
                                        self.text_threshold, image_sizes)
        for index, image_detections in zip(batch, found):
            detections[index] = image_detections
        return detections

    def masks_for_boxes(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, (nbox, H, W) bool SAM2 masks, one per frame box.

        The images that have boxes are encoded together in one image-encoder pass; the prompt encoder
        and mask decoder then run once per image on its slice of the embeddings with all of its boxes
        (box counts differ per image, and per-image decoding needs no padded boxes). Images without
        boxes skip SAM2 and get (0, H, W).
        """
        import torch

        masks = [np.zeros((0, *image.shape[:2]), bool) for image in images]
        batch = [index for index, image_boxes in enumerate(boxes) if len(image_boxes)]
        if not batch:
            return masks
        pixel_values = np.concatenate([sam2_pixel_values(images[index], self._sam2_size) for index in batch])
        with torch.inference_mode():
            embeddings = self._segmenter.get_image_embeddings(torch.from_numpy(pixel_values).to(self.device, self._dtype))
            for position, index in enumerate(batch):
                height, width = images[index].shape[:2]
                input_boxes = torch.from_numpy(sam2_boxes(boxes[index], height, width, self._sam2_size))[None]
                # A box is an unambiguous prompt: one mask per box; SAM2 itself falls back to the best of
                # its three candidates when the single mask is unstable.
                outputs = self._segmenter(
                    image_embeddings=[level[position:position + 1] for level in embeddings],
                    input_boxes=input_boxes.to(self.device), multimask_output=False,
                )
                mask_logits = outputs.pred_masks[0].float().cpu().numpy()
                iou_scores = outputs.iou_scores[0].float().cpu().numpy()
                masks[index] = masks_to_frame(select_best_masks(mask_logits, iou_scores), height, width)
        return masks
