"""EmotionNet: facial emotion recognition on FER2013, trained with Accelerate (DDP or DeepSpeed)."""
