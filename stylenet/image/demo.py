"""scikit-image's bundled photos: the demo training set, and ``demo:<name>`` wherever a path is asked."""

from __future__ import annotations

from pathlib import Path

from stylenet.errors import StylenetError
from stylenet.image.formats import IMAGE_EXTENSIONS

#: The demo's training photos (``data=demo``). Not ``ihc.png`` (the demo style: training on the style
#: image itself would flatter the results) nor ``motorcycle_right.png`` (the stereo twin of
#: ``motorcycle_left.png``, so a near-duplicate of a photo that could be held out).
DEMO_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "retina.jpg", "camera.png")


def demo_root() -> Path:
    """The folder of scikit-image's sample images (shipped in its wheel, no download)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def resolve_image_path(spec: str | Path) -> Path:
    """A path, or ``demo:<name>`` for one of scikit-image's bundled photos (e.g. ``demo:chelsea``)."""
    text = str(spec)
    if text.startswith("demo:"):
        name = text.removeprefix("demo:")
        # names, not patterns: "demo:" or "demo:**" is no image (and no glob pattern pathlib accepts)
        matches = sorted(path for path in demo_root().iterdir() if name in (path.stem, path.name))
        if not matches:  # every picture scikit-image ships (demo:ihc is the demo's style)
            pictures = sorted({path.stem for path in demo_root().iterdir()
                               if path.suffix.lower() in IMAGE_EXTENSIONS})  # not its arrays, XML and Python
            raise StylenetError(f"no bundled demo image {name!r}; choose one of {', '.join(pictures)}")
        return matches[0]
    return Path(text).expanduser()
