"""Saliency maps for the saliency-guided baselines: (B, H, W), on the images' device.

- `spectral_residual`: a static, model-free map (Hou & Zhang, CVPR 2007) as GuidedMixup computes it
  (3neutronstar/GuidedMixup `spectral_residual.py`); GuidedMixup uses it, and SaliencyMix by default.
- `opencv_fine_grained`: OpenCV's fine-grained static saliency (Montabone & Soto, 2010), the map the
  SaliencyMix original uses; it needs opencv-contrib (`pip install 'catchup-mix[saliency]'`) and runs on
  the CPU, one image at a time (one host-device synchronisation per call).
- `input_gradient`: the norm over channels of the gradient of the loss with respect to the input pixels,
  as PuzzleMix and Co-Mixup compute it (snu-mllab/PuzzleMix `main.py`, `unary = sqrt(mean(grad^2, 1))`):
  one extra forward and backward of the network being trained.
"""

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside torch.compile and (Distributed)DataParallel wrappers.

    The saliency pass runs on it: a forward of the DDP wrapper without its backward would leave DDP's
    reducer waiting for gradients, and the saliency gradient must not be all-reduced or compiled for.
    """
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        else:
            return model


def input_gradient(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """sqrt(mean over channels of (d loss / d pixel)^2) for the mean cross-entropy of the batch.

    The network runs in eval mode (batch-norm statistics neither used nor updated), as PuzzleMix and
    Co-Mixup do without their `clean_lam` option, and its previous mode is restored. Only the input
    gradient is computed (`torch.autograd.grad`), so no parameter gradient is left behind; the pass runs
    in full precision, outside the trainer's autocast.
    """
    network = unwrap(model)
    was_training = network.training
    network.eval()
    try:
        with torch.enable_grad():
            pixels = images.detach().requires_grad_(True)
            loss = F.cross_entropy(network(pixels).float(), targets)
            (gradient,) = torch.autograd.grad(loss, pixels)
    finally:
        network.train(was_training)
    return gradient.pow(2).mean(1).sqrt()


def spectral_residual(images: torch.Tensor, blur_size: int = 7, blur_sigma: float = 3.0,
                      max_side: int = 128) -> torch.Tensor:
    """Spectral-residual saliency of each image, as GuidedMixup's `SpectralResidual`.

    Grey image (images larger than max_side are first resized to max_side x max_side and the map resized
    back) -> 2-D FFT -> the log amplitude minus its 3x3 box-filtered version (replicate padding) is the
    spectral residual -> inverse FFT with the original phase -> magnitude -> Gaussian blur (7 x 7, sigma 3).
    images: (B, C, H, W), normalised or not (the original feeds normalised images). Returns (B, H, W) >= 0.
    """
    height, width = images.shape[-2:]
    grey = TF.rgb_to_grayscale(images) if images.shape[1] == 3 else images.mean(1, keepdim=True)
    grey = grey.float()
    if height > max_side:
        grey = TF.resize(grey, [max_side, max_side], antialias=True)
    spectrum = torch.fft.fft2(grey)
    amplitude = (spectrum.real**2 + spectrum.imag**2 + 1e-10).sqrt()
    log_amplitude = amplitude.log()
    smoothed = F.avg_pool2d(F.pad(log_amplitude, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    residual = (log_amplitude - smoothed).exp()
    saliency = torch.fft.ifft2(spectrum * (residual / amplitude)).abs()
    if blur_size:
        saliency = TF.gaussian_blur(saliency, [blur_size, blur_size], [blur_sigma, blur_sigma])
    if height > max_side:
        saliency = TF.resize(saliency, [height, width], antialias=True)
    return saliency.squeeze(1)


OPENCV_HINT = ("needs OpenCV's contrib modules (cv2.saliency): pip install 'catchup-mix[saliency]', which installs "
               "opencv-contrib-python-headless; another opencv-python* package (imagecorruptions pulls in one) shares "
               "the cv2 module and may have replaced it: pip install --force-reinstall --no-deps "
               "opencv-contrib-python-headless")


def opencv_saliency_module():
    """`cv2.saliency`, or ImportError naming the package to install (`OPENCV_HINT`)."""
    try:
        import cv2
    except ImportError:
        raise ImportError(f"OpenCV's fine-grained saliency {OPENCV_HINT}") from None
    if not hasattr(getattr(cv2, "saliency", None), "StaticSaliencyFineGrained_create"):  # a build without contrib
        raise ImportError(f"OpenCV {cv2.__version__} is installed without its contrib modules; the fine-grained "
                          f"saliency {OPENCV_HINT}")
    return cv2.saliency


def opencv_fine_grained(images: torch.Tensor) -> torch.Tensor:
    """OpenCV's `StaticSaliencyFineGrained` map of each image, computed as the SaliencyMix original does.

    Each image is handed to OpenCV as SaliencyMix's `saliency_bbox` prepares it
    (afm-shahab-uddin/SaliencyMix `SaliencyMix_CIFAR/saliencymix.py`: `img.cpu().numpy().transpose(1, 2, 0)`):
    the float32 image as the training loop has it (normalised), channels last, in the tensor's channel
    order (which OpenCV reads as BGR, as there). OpenCV's detector is meant for 8-bit images: on float32
    it reads the float buffer's bytes as pixels, so the map follows the exact float values (see
    `baselines.SaliencyMix`). images: (B, C, H, W). Returns (B, H, W) float32 in [0, 1] on the images'
    device. Runs on the CPU, image by image: one host-device synchronisation per call.
    """
    module = opencv_saliency_module()
    detector = module.StaticSaliencyFineGrained_create()
    pixels = images.detach().float().cpu().permute(0, 2, 3, 1).contiguous().numpy()
    maps = []
    for image in pixels:
        found, saliency_map = detector.computeSaliency(image)
        if not found:
            raise RuntimeError("OpenCV's StaticSaliencyFineGrained found no saliency map for an image")
        maps.append(torch.from_numpy(saliency_map))
    return torch.stack(maps).to(images.device, non_blocking=True)
