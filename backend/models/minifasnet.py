"""MiniFASNet liveness (Silent-Face anti-spoofing): a V2 + V1SE ensemble.

Each model sees an 80x80 crop around the face box, scaled up to give it context
(2.7x for V2, 4.0x for V1SE), as raw BGR 0-255 floats. Softmaxes of the two
models are averaged; class 1 is a real face.
"""
import cv2
import numpy as np

from face_contract.errors import InvalidInput
from .face import Face

REAL_CLASS = 1
# Where the frame is too small for a crop's nominal scale, the scale shrinks to fit.
# Below this fitted scale (half of V2's 2.7x) the crop is nearly all face and no
# context, and the verdict means nothing: face-filling crops (UTKFace chips, webcam
# face crops) fit at 1.0-1.1x, while whole photos of the NUAA and Silent-Face sets
# fit at 1.5x or more.
MIN_CONTEXT_SCALE = 1.35
# MiniFASNet learnt colour cues: on a greyscale image every real face scores as a spoof.
# A pixel counts as coloured when its channels differ by more than COLOUR_SPREAD levels,
# and an image as colour when more than MIN_COLOUR_FRACTION of its pixels are. Greyscale
# files decode with equal channels and toned or re-encoded monochrome photos stay within a
# few levels (a sepia UTKFace chip: 0.02% of pixels), while the least colourful colour
# photo of ../shared/faces has 3.9%.
COLOUR_SPREAD = 16
MIN_COLOUR_FRACTION = 0.01
_SAMPLE_SIDE = 256  # the test looks at about this many pixels a side: enough, and cheap


def is_greyscale(img: np.ndarray, face: Face | None = None) -> bool:
    """Whether the image, or the face's box in it when given, has (almost) no colour."""
    if img.ndim == 2 or img.shape[2] == 1:
        return True
    if face is not None:  # the face is what is judged: colour elsewhere says nothing of it
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        img = img[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
        if img.size == 0:
            return True
    step = max(1, max(img.shape[:2]) // _SAMPLE_SIDE)
    sample = img[::step, ::step, :3]
    spread = sample.max(axis=2).astype(np.int16) - sample.min(axis=2)
    return float((spread > COLOUR_SPREAD).mean()) <= MIN_COLOUR_FRACTION


class MiniFASNet:
    taskname = "antispoof"

    def __init__(self, path: str, session, crop_scale: float):
        self.path = path
        self.session = session
        self.crop_scale = crop_scale
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        self.input_size = (int(inp.shape[3]), int(inp.shape[2]))
        self.output_name = session.get_outputs()[0].name

    def prepare(self, **_):
        pass

    def crop(self, img: np.ndarray, face: Face) -> np.ndarray:
        """Crop crop_scale times the box about its centre, shrinking the scale to fit
        the frame and sliding the window inside it, as Silent-Face does."""
        h, w = img.shape[:2]
        bw, bh = face.width, face.height
        scale = min((h - 1) / bh, (w - 1) / bw, self.crop_scale)
        if scale < MIN_CONTEXT_SCALE:
            raise InvalidInput(
                f"face cropped too tightly for liveness: a {self.crop_scale}x crop around the "
                f"face fits the image only at {scale:.2f}x (at least {MIN_CONTEXT_SCALE}x needed); "
                "send an image with more background around the face")
        cw, ch = bw * scale, bh * scale
        cx, cy = face.box[0] + bw / 2, face.box[1] + bh / 2
        x1, y1 = max(0.0, cx - cw / 2), max(0.0, cy - ch / 2)
        x1, y1 = min(x1, w - 1 - cw), min(y1, h - 1 - ch)
        x1, y1 = int(max(0.0, x1)), int(max(0.0, y1))
        x2, y2 = int(x1 + cw), int(y1 + ch)
        return cv2.resize(img[y1:y2 + 1, x1:x2 + 1], self.input_size)

    def get(self, img: np.ndarray, face: Face) -> np.ndarray:
        """Softmax over (spoof-print, real, spoof-replay) for one face."""
        blob = self.crop(img, face).astype(np.float32).transpose(2, 0, 1)[None]
        logits = self.session.run([self.output_name], {self.input_name: blob})[0][0]
        e = np.exp(logits - logits.max())
        return e / e.sum()


class LivenessEnsemble:
    def __init__(self, models: list[MiniFASNet], threshold: float = 0.5):
        self.models = models
        self.threshold = threshold

    def check(self, img: np.ndarray, face: Face) -> tuple[bool, float]:
        """(is_real, p_real) for one face."""
        probs = np.mean([m.get(img, face) for m in self.models], axis=0)
        p_real = float(probs[REAL_CLASS])
        return bool(np.argmax(probs) == REAL_CLASS and p_real >= self.threshold), p_real
