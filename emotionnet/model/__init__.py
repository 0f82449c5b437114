"""The network: EfficientNet-B0 backbone, channel and spatial attention, transformer encoder, MLP head."""

from emotionnet.model.emotionnet import EmotionNet, ModelConfig, create_model

__all__ = ["EmotionNet", "ModelConfig", "create_model"]
