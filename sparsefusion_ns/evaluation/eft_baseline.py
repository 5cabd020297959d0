"""The EFT baseline: the Epipolar Feature Transformer's feed-forward colour at each held-out camera.

The paper's "EFT alone" row (docs/method.md#evaluation). The EFT reads exactly what the distillation shows
it (:func:`~sparsefusion_ns.distillation.teacher_inputs.inputs_for_teacher`: the input views cropped,
resized and masked as in the teacher's training, their PyTorch3D NDC cameras, depth samples centred
on d̄ of the input cameras). The EFT treats every ray on its own, so it is queried on a **denser ray
grid**: one ray through every pixel centre of the evaluation image (``EpipolarFeatureTransformer.query``
with ``pixel_grid``), not on its ``grid_size``² latent grid upsampled. For an image that is not square
the query covers the square it is zero-padded to (as the teacher's crops are) and is cut to the image.
"""

from __future__ import annotations

from jaxtyping import Float
from torch import Tensor

from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManager

from sparsefusion_ns.distillation.counters import TeacherCost, timed
from sparsefusion_ns.distillation.teacher_inputs import TeacherInputs, inputs_for_teacher, ndc_cameras
from sparsefusion_ns.evaluation.held_out import HeldOutView
from sparsefusion_ns.teacher.bundle import Teacher


class EFTBaseline:
    """A :data:`~sparsefusion_ns.evaluation.held_out.ViewRenderer`: the EFT's colour at full resolution.

    ``cost`` counts the EFT queries and the seconds they took (over all calls).
    """

    def __init__(self, teacher: Teacher, inputs: TeacherInputs) -> None:
        self.teacher = teacher
        self.device = next(teacher.parameters()).device
        self.images = inputs.images.to(self.device)
        self.cameras = inputs.cameras.to(self.device)
        self.depth_center = inputs.depth_center
        self.cost = TeacherCost()
        """Teacher work done so far (EFT queries and seconds)."""

    @classmethod
    def for_scene(cls, teacher: Teacher, datamanager: VanillaDataManager) -> EFTBaseline:
        """The baseline of the scene a (trained or not) datamanager serves."""
        return cls(teacher, inputs_for_teacher(datamanager, teacher))

    def __call__(self, view: HeldOutView) -> Float[Tensor, "3 h w"]:
        side = max(view.height, view.width)
        camera = ndc_cameras(view.camera).to(self.device)  # of the square-padded image, field frame
        with timed(self.cost, self.device) as cost:
            rgb, _ = self.teacher.eft.query(self.images, self.cameras, camera, self.depth_center, pixel_grid=side)
            cost.eft_queries += 1
        return rgb[:, : view.height, : view.width]
