"""EmotionNet: facial emotion recognition on FER2013, trained with Accelerate (DDP or DeepSpeed)."""

from emotionnet.model import EmotionNet, ModelConfig

__all__ = ["EmotionNet", "ModelConfig"]
