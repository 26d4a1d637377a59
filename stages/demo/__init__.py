"""The embedded demo: Fashion-MNIST on injected backgrounds and a tiny CLIP pretrained here.

An honest, small analogue of the paper's setting that runs offline on a CPU: real product
photos (Fashion-MNIST) composited onto procedural backgrounds that read as phrases of the
official background bank ("in the snow", "in a forest", ...), a biased fine-tuning split where
each class mostly appears on its own background, and group-shift / domain-shift test splits.
"""
