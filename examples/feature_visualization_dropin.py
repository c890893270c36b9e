"""An existing zennit-crp script, changed by one line to get CSP-ready analysis results.

Runs offline: the demo world's classifier, and a torchvision ResNet-18 (random weights unless you
pass --resnet-weights IMAGENET1K_V1, which downloads them) analysed on demo images.

    python examples/feature_visualization_dropin.py [--samples 512]
"""
import argparse
import tempfile

from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from torchvision.transforms import Normalize
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer

from crp_csp import CSPFeatureVisualization, load_encoder, load_model  # was: from crp.visualization import FeatureVisualization
from crp_csp.demo import DemoWorldDataset


def imagenet_normalize(images):
    return Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))(images)


def analyse(model, layer_map, composite, dataset, path, encoder, preprocess_fn=None):
    attribution = CondAttribution(model)
    # was: fv = FeatureVisualization(attribution, dataset, layer_map, path=path)
    fv = CSPFeatureVisualization(attribution, dataset, layer_map, preprocess_fn=preprocess_fn, path=path,
                                 encoder=encoder)
    fv.run(composite, 0, len(dataset), batch_size=32)
    layer = next(iter(layer_map))
    references = fv.get_max_reference([0, 1], layer, "relevance", (0, 4), composite=composite, rf=True)
    print(f"{type(model).__name__} {layer}: {len(references[0])} reference crops for concept 0;",
          f"store {fv.store}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--resnet-weights", default=None)
    args = parser.parse_args()
    dataset = DemoWorldDataset("probe", size=args.samples)
    encoder = load_encoder("demo")
    with tempfile.TemporaryDirectory() as tmp:
        analyse(load_model("demo"), {"features.conv4": ChannelConcept()},
                EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]), dataset, f"{tmp}/demo", encoder)
        spec = "torchvision:resnet18" + (f"/{args.resnet_weights}" if args.resnet_weights else "")
        # ResNet expects ImageNet-normalised input; preprocess_fn is crp's hook for that
        analyse(load_model(spec), {"layer4": ChannelConcept()}, EpsilonPlusFlat(canonizers=[ResNetCanonizer()]),
                dataset, f"{tmp}/resnet", encoder, preprocess_fn=imagenet_normalize)


if __name__ == "__main__":
    main()
