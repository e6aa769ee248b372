"""Model-free descriptions of an image: colours, exposure, sharpness, perceptual hash."""
