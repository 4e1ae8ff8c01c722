"""SCRFD face detector (the insightface packs' det_*.onnx): boxes, scores, 5 landmarks."""
import cv2
import numpy as np

from .face import MAX_NMS_CANDIDATES, Face

STRIDES = (8, 16, 32)
ANCHORS_PER_CELL = 2
NMS_IOU = 0.4


class SCRFD:
    taskname = "detection"

    def __init__(self, path: str, session):
        self.path = path
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_names = [o.name for o in session.get_outputs()]
        shape = session.get_inputs()[0].shape
        self.fixed_size = (shape[3], shape[2]) if all(isinstance(d, int) for d in shape[2:]) else None
        self.input_size = self.fixed_size or (640, 640)
        self._centers = {}

    def prepare(self, det_size=(640, 640), **_):
        self.input_size = self.fixed_size or tuple(det_size)

    def _place(self, img: np.ndarray):
        """Image on a zero canvas at its own scale; only images too big are shrunk.

        Enlarging a face-filling crop to the canvas makes SCRFD miss the face. The
        network is fully convolutional, so a small image gets a canvas only as big
        as itself (rounded up to the largest stride): a 250x250 photo costs a sixth
        of a 640x640 pass.
        """
        cw, ch = self.input_size
        h, w = img.shape[:2]
        scale = min(1.0, cw / w, ch / h)
        if scale < 1.0:
            img = cv2.resize(img, (max(1, int(w * scale)), max(1, int(h * scale))),
                             interpolation=cv2.INTER_AREA)
        if self.fixed_size is None:
            cw, ch = (min(c, -(-s // STRIDES[-1]) * STRIDES[-1])
                      for c, s in ((cw, img.shape[1]), (ch, img.shape[0])))
        canvas = np.zeros((ch, cw, 3), np.uint8)
        canvas[:img.shape[0], :img.shape[1]] = img
        return canvas, scale

    def _anchor_centers(self, fh: int, fw: int, stride: int) -> np.ndarray:
        key = (fh, fw, stride)
        if key not in self._centers:
            ys, xs = np.mgrid[:fh, :fw]
            centers = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
            self._centers[key] = np.repeat(centers, ANCHORS_PER_CELL, axis=0)
        return self._centers[key]

    def detect(self, img: np.ndarray, threshold: float) -> list[Face]:
        canvas, scale = self._place(img)
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128, canvas.shape[1::-1],
                                     (127.5, 127.5, 127.5), swapRB=True)
        outs = [o.reshape(-1, o.shape[-1]) for o in self.session.run(self.output_names,
                                                                    {self.input_name: blob})]
        boxes, scores, kpss = [], [], []
        ch, cw = canvas.shape[:2]
        for i, stride in enumerate(STRIDES):
            score = outs[i][:, 0]
            keep = np.where(score >= threshold)[0]
            if keep.size == 0:
                continue
            centers = self._anchor_centers(ch // stride, cw // stride, stride)[keep]
            dist = outs[i + 3][keep] * stride
            boxes.append(np.hstack([centers - dist[:, :2], centers + dist[:, 2:]]))
            kps = outs[i + 6][keep].reshape(-1, 5, 2) * stride + centers[:, None, :]
            kpss.append(kps)
            scores.append(score[keep])
        if not boxes:
            return []
        boxes = np.vstack(boxes) / scale
        kpss = np.vstack(kpss) / scale
        scores = np.concatenate(scores)
        if scores.size > MAX_NMS_CANDIDATES:
            best = np.argpartition(-scores, MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]
            boxes, kpss, scores = boxes[best], kpss[best], scores[best]
        xywh = np.hstack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
        keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), float(threshold), NMS_IOU)
        return [Face(boxes[k].astype(np.float32), float(scores[k]), kpss[k].astype(np.float32))
                for k in np.asarray(keep).reshape(-1)]
