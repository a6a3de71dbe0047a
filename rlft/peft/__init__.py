"""Parameter-efficient fine-tuning: LoRA / PiSSA through `peft`, and full fine-tuning."""
