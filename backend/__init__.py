"""The face backend. Importing the package sets OpenCV's own image-size limits, which OpenCV
reads once when it loads: a decode then checks the size that OpenCV's decoder itself read
from the header, before it allocates anything (see backend/images.py)."""
import os

from face_contract.images import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

os.environ.update(OPENCV_IO_MAX_IMAGE_PIXELS=str(MAX_IMAGE_PIXELS),
                  OPENCV_IO_MAX_IMAGE_WIDTH=str(MAX_IMAGE_SIDE),
                  OPENCV_IO_MAX_IMAGE_HEIGHT=str(MAX_IMAGE_SIDE))
