"""The published crops for face and ImageNet images, so cached data matches what U-ViT, ADM and DiT trained on."""

from __future__ import annotations

from PIL import Image

# U-ViT (and DDIM before it) crop aligned CelebA (178x218) to the 128x128 box centred at x=89, y=121,
# i.e. torchvision ``F.crop(img, top=57, left=25, height=128, width=128)``, then resize to 64.
_CELEBA_WIDTH, _CELEBA_HEIGHT = 178, 218
_CELEBA_BOX, _CELEBA_CX, _CELEBA_CY = 128, 89, 121


def celeba_crop(image: Image.Image, size: int = 64) -> Image.Image:
    """U-ViT's CelebA crop then a bilinear (antialiased) resize to ``size``.

    Exact for aligned CelebA; other image sizes get the same box scaled with the width (clipped to the image),
    which keeps the face framing for rescaled copies of the dataset.
    """
    width, height = image.size
    scale = width / _CELEBA_WIDTH
    box = min(round(_CELEBA_BOX * scale), width, height)
    left = round(_CELEBA_CX * scale - box / 2)
    top = round(_CELEBA_CY * height / _CELEBA_HEIGHT - box / 2)
    left = min(max(left, 0), width - box)
    top = min(max(top, 0), height - box)
    cropped = image.crop((left, top, left + box, top + box))
    return cropped.resize((size, size), resample=Image.BILINEAR)


def center_crop_arr(image: Image.Image, size: int) -> Image.Image:
    """ADM/DiT ImageNet preprocessing: halve with a box filter while the short side is >= 2*size,
    resize (bicubic) so the short side is ``size``, then take the centre ``size`` x ``size``."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(side // 2 for side in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(side * scale) for side in image.size), resample=Image.BICUBIC)
    left = (image.size[0] - size) // 2
    top = (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))
