"""Image generators: FLUX through diffusers, Janus-Pro through the project's own loop."""
