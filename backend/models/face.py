"""A detected face: box (x1, y1, x2, y2), detector score, five landmarks."""
import dataclasses

import numpy as np

# Candidates a detector keeps, best scores first, before non-maximum suppression: NMS costs
# the square of its input, and a threshold near 0 would hand it every anchor (5,822 boxes,
# 3 s, for one 640x640 photo). Far more than any photo's faces.
MAX_NMS_CANDIDATES = 1000


@dataclasses.dataclass
class Face:
    box: np.ndarray    # float32 [4]: x1, y1, x2, y2 in image pixels
    score: float
    kps: np.ndarray    # float32 [5, 2]: eyes, nose, mouth corners (image left to right)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return self.width * self.height


def by_area(faces: list[Face]) -> list[Face]:
    """Largest first; equal areas by score. The first is the primary face."""
    return sorted(faces, key=lambda f: (-f.area, -f.score))


def clip_to_image(faces: list[Face], shape) -> list[Face]:
    h, w = shape[:2]
    for f in faces:
        f.box = np.clip(f.box, 0, [w, h, w, h]).astype(np.float32)
    return [f for f in faces if f.width > 1 and f.height > 1]
