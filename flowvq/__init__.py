"""flowvq: emotional audio-driven talking-face generation (FlowVQTalker, GMTalker) in Lightning."""
__version__ = "0.1.0"
