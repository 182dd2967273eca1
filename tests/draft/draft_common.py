"""Constants shared by the DRaFT tests."""

PROMPTS = ["a photo of a cat", "a red car", "a blue house", "a dog on grass"]
