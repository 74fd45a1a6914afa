"""search: networks found for a device with that device's latency, as MobileNetV3 was.

Two searches read latency from a device's table (:mod:`edgepipe.latency_tables`) instead of
deploying every candidate. NetAdapt (:mod:`.netadapt`, Yang et al. 2018) shrinks a trained
network step by step, removing the filters that cut the predicted latency by δ at the least
loss of accuracy (:mod:`.surgery` inherits the weights); the block search (:mod:`.mnas`,
MnasNet, Tan et al. 2019) samples the factorised space of :mod:`edgepipe.models.space` with
an RL controller, regularised evolution or at random, rewarding ACC · (LAT/T)^w. Both train on
real images (:mod:`.data`: an ImageFolder or scikit-learn's digits; NetAdapt also on a
distillation set, :mod:`.distill`: a trained seed such as torchvision's ImageNet MobileNetV2,
:mod:`.seeds`, as teacher on crops of real photos, split by photo) in this process, local
worker processes or a Ray cluster (:mod:`.workers`), resume from their folder after a kill
(:mod:`.state`), and leave a normal model behind, ``model.json`` + ``weights.pth``, checked on
the device (:mod:`.results`), which ``edgepipe convert`` takes. :mod:`.baseline` is what
NetAdapt has to beat: the seed at a smaller width multiplier.
"""
