"""Patterns in ambiguity: the samples of a GASTeN generator that its classifier cannot tell apart, clustered in
the classifier's embedding, and one prototype per cluster.

Three steps, each reading the previous one's file: (1) sample the generator, keep the samples with
C(G(z)) in [0.5 - acd, 0.5 + acd] and embed them with the classifier; (2) for each option (a reduction,
UMAP/t-SNE/PCA, then a clustering, Gaussian mixture/HDBSCAN) let Optuna tune the hyper-parameters, scoring
each candidate fitted on all samples by its silhouette in the reduced space (HDBSCAN's noise left out,
candidates marking over 30% as noise rejected), and keep the best option; (3) prototypes are the clusters'
medoids, drawn with attribution maps.
"""
import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import hdbscan
import optuna
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score
from sklearn.mixture import GaussianMixture
from torch import Tensor, nn

from hardness.cli import TORCHVISION_ROOT, UserInputError, add_device_argument, add_output_arguments, add_shared_arguments
from hardness.config import ConfigError, check_choice, check_number, read_config
from hardness.gasten import Z_DIM, classifier_path, epoch_folders, generate, load_classifier, load_pair
from hardness.gasten_metrics import feature_cnn, frechet_distance, frechet_metric
from hardness.gasten_names import ConfusionWeight, Step2Cell
from hardness.prediction import predict
from hardness.results import gasten_path, save_figure, save_npz_with_settings
from neural_networks import DCGANGenerator, FeatureCNN

DEFAULTS: dict[str, Any] = {
    "gasten_run": "Results/gasten/mnist_7v1", "classifier": "cnn-1-1.0", "weight": 25, "step1_epoch": 5,
    "step2_epoch": 10, "n_samples": 15000, "acd": 0.1, "n_trials": 20, "options": ["umap_gmm", "umap_hdbscan"],
    "prototype_space": "embedding", "seed": 0, "output": None,
}
REDUCERS, CLUSTERERS = ("umap", "tsne", "pca"), ("gmm", "hdbscan")
MAX_NOISE_SHARE = 0.3


def load_ambiguity_config(path: Path, overrides: list[str], seed: int | None) -> dict:
    config = read_config(path, DEFAULTS, overrides)
    if seed is not None:
        config["seed"] = seed
    config["output"] = config["output"] or Path(path).stem
    for field in ("step1_epoch", "step2_epoch", "seed"):
        check_number(config, field, 0, integer=True)
    for field in ("n_samples", "n_trials"):
        check_number(config, field, 1, integer=True)
    check_number(config, "acd", 0, strict=True)
    check_choice(config, "prototype_space", ["embedding", "reduced"])
    if not isinstance(config["options"], list) or not config["options"]:
        raise ConfigError("options", f"must be a non-empty list such as [umap_gmm, umap_hdbscan], got {config['options']!r}")
    for option in config["options"]:
        reducer, _, clusterer = str(option).partition("_")
        if reducer not in REDUCERS or clusterer not in CLUSTERERS:
            raise ConfigError("options", f"{option!r} is not <reduction>_<clustering> with a reduction of "
                                         f"{', '.join(REDUCERS)} and a clustering of {', '.join(CLUSTERERS)}")
    return config


# ----------------------------------------------------------------------------- step 1: ambiguous samples

def gasten_cell(config: dict, results_dir: Path, device: torch.device) -> tuple[nn.Module, nn.Module, dict]:
    """The step-2 generator and the classifier the config names, and the GASTeN run's settings."""
    try:
        weight = ConfusionWeight.parse(config["weight"])
    except ValueError as error:
        raise ConfigError("weight", str(error)) from None
    cell = Path(config["gasten_run"]) / "step2" / Step2Cell(config["classifier"], weight,
                                                            config["step1_epoch"]).folder_name()
    found = epoch_folders(cell)
    if config["step2_epoch"] not in found:
        raise UserInputError(f"no step-2 checkpoint of epoch {config['step2_epoch']} in {cell} (found "
                             f"{sorted(found) or 'none'}); run gasten_train.py first")
    checkpoint = found[config["step2_epoch"]]
    settings = json.loads((checkpoint / "config.json").read_text())
    generator = DCGANGenerator(Z_DIM).to(device)
    generator.load_state_dict(torch.load(checkpoint / "generator.pt", map_location=device, weights_only=True))
    classifier = load_classifier(classifier_path(settings["config"], results_dir, config["classifier"]), device)
    return generator.eval(), classifier, settings["config"]


def ambiguous_samples(generator: nn.Module, classifier: nn.Module, n_samples: int, acd: float,
                      seed: int) -> dict[str, Tensor]:
    """Sample `n_samples` images from seeded noise; keep those with C in [0.5 - acd, 0.5 + acd]."""
    noise = torch.randn(n_samples, Z_DIM, generator=torch.Generator().manual_seed(seed))
    images = generate(generator, noise.to(next(generator.parameters()).device))
    probabilities = predict(classifier, images)
    kept = (probabilities - 0.5).abs() <= acd
    embeddings = predict(classifier.embed, images[kept]) if kept.any() else torch.zeros(0, classifier.output.in_features)
    return {"images": images, "probabilities": probabilities, "kept": kept, "embeddings": embeddings}


# ----------------------------------------------------------------------------- step 2: clustering

def reduce(embeddings: np.ndarray, reducer: str, params: dict[str, Any], seed: int) -> np.ndarray:
    """[n, d] -> [n, components] by UMAP (cosine metric), t-SNE or PCA."""
    if reducer == "umap":
        import umap  # slow to import (numba): only when asked for
        return umap.UMAP(n_neighbors=params["n_neighbors"], min_dist=params["min_dist"],
                         n_components=params["n_components"], metric="cosine", random_state=seed,
                         n_jobs=1).fit_transform(embeddings)
    if reducer == "tsne":
        return TSNE(n_components=2, perplexity=params["perplexity"], random_state=seed).fit_transform(embeddings)
    return PCA(n_components=params["n_components"], random_state=seed).fit_transform(embeddings)


def cluster(reduced: np.ndarray, clusterer: str, params: dict[str, Any], seed: int) -> np.ndarray:
    """Labels [n]; -1 marks HDBSCAN's noise."""
    if clusterer == "gmm":
        return GaussianMixture(params["n_components"], covariance_type="full", init_params="k-means++",
                               random_state=seed).fit_predict(reduced)
    # the hdbscan package: scikit-learn 1.9's HDBSCAN fails on leaf selection with an epsilon above 0
    return hdbscan.HDBSCAN(min_cluster_size=params["min_cluster_size"], min_samples=3, cluster_selection_method="leaf",
                           cluster_selection_epsilon=float(params["cluster_selection_epsilon"])).fit_predict(reduced)


def suggest(trial: optuna.Trial, reducer: str, clusterer: str, samples: int) -> tuple[dict, dict]:
    """The original's search spaces (UMAP components capped below the sample count)."""
    if reducer == "umap":
        reduction = {"n_neighbors": trial.suggest_int("n_neighbors", 5, 25),
                     "min_dist": trial.suggest_float("min_dist", 0.01, 0.25),
                     "n_components": trial.suggest_int("n_components", min(5, samples - 2), min(60, samples - 2))}
    elif reducer == "tsne":
        reduction = {"perplexity": trial.suggest_float("perplexity", 5, min(30, samples - 1))}
    else:
        reduction = {"n_components": trial.suggest_int("n_components", 2, min(60, samples - 1))}
    if clusterer == "gmm":
        clustering = {"n_components": trial.suggest_int("gmm_components", 3, min(15, samples - 1))}
    else:
        clustering = {"min_cluster_size": trial.suggest_int("min_cluster_size", 3, 10),
                      "cluster_selection_epsilon": trial.suggest_float("cluster_selection_epsilon", 0.0, 5.0)}
    return reduction, clustering


def reduced_silhouette(reduced: np.ndarray, labels: np.ndarray) -> float:
    """Silhouette of the non-noise points; -1 when noise is over 30% or fewer than two clusters remain."""
    clustered = labels >= 0
    if clustered.mean() < 1 - MAX_NOISE_SHARE or len(np.unique(labels[clustered])) < 2:
        return -1.0
    return float(silhouette_score(reduced[clustered], labels[clustered]))


def tune(embeddings: np.ndarray, option: str, n_trials: int, seed: int) -> dict[str, Any]:
    """Optuna (seeded TPE) over the option's hyper-parameters; the best candidate refitted."""
    reducer, _, clusterer = option.partition("_")

    def objective(trial: optuna.Trial) -> float:
        reduction, clustering = suggest(trial, reducer, clusterer, len(embeddings))
        reduced = reduce(embeddings, reducer, reduction, seed)
        return reduced_silhouette(reduced, cluster(reduced, clusterer, clustering, seed))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n_trials)
    reduction, clustering = suggest(optuna.trial.FixedTrial(study.best_params), reducer, clusterer, len(embeddings))
    reduced = reduce(embeddings, reducer, reduction, seed)
    labels = cluster(reduced, clusterer, clustering, seed)
    return {"option": option, "score": reduced_silhouette(reduced, labels), "params": study.best_params,
            "reduced": reduced, "labels": labels}


# ----------------------------------------------------------------------------- step 3: prototypes

def medoids(points: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """{cluster: index of its member with the least summed Euclidean distance to the others}; noise skipped."""
    found = {}
    for label in sorted(set(labels.tolist()) - {-1}):
        members = np.flatnonzero(labels == label)
        distances = np.linalg.norm(points[members, None] - points[None, members], axis=-1).sum(1)
        found[label] = int(members[np.argmin(distances)])
    return found


def clustering_report(embeddings: np.ndarray, reduced: np.ndarray, labels: np.ndarray,
                      prototypes: dict[int, int]) -> dict[str, Any]:
    """Silhouette (reduced and embedding spaces), Calinski-Harabasz, Davies-Bouldin (reduced space), noise
    share, cluster sizes, and the prototypes' mean pairwise cosine similarity of their embeddings (which the
    original logged as "avg_pairwise_distance")."""
    clustered = labels >= 0
    several = len(np.unique(labels[clustered])) >= 2
    rows = embeddings[list(prototypes.values())]
    unit = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    cosine = unit @ unit.T
    pairs = np.triu_indices(len(rows), 1)
    return {
        "silhouette_reduced": float(silhouette_score(reduced[clustered], labels[clustered])) if several else float("nan"),
        "silhouette_embedding": float(silhouette_score(embeddings[clustered], labels[clustered])) if several else float("nan"),
        "calinski_harabasz": float(calinski_harabasz_score(reduced[clustered], labels[clustered])) if several else float("nan"),
        "davies_bouldin": float(davies_bouldin_score(reduced[clustered], labels[clustered])) if several else float("nan"),
        "noise_share": float(1 - clustered.mean()),
        "cluster_sizes": {int(c): int((labels == c).sum()) for c in sorted(set(labels.tolist()) - {-1})},
        "prototype_mean_pairwise_cosine": float(cosine[pairs].mean()) if len(rows) > 1 else float("nan"),
    }


def attributions(classifier: nn.Module, images: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Saliency (|dC/dx|) and GradientSHAP (captum; baseline: an all -1, i.e. black, image) of C for `images`."""
    from captum.attr import GradientShap, Saliency
    inputs = images.clone().requires_grad_()
    saliency = Saliency(classifier).attribute(inputs, abs=True).detach()
    torch.manual_seed(seed)
    shap = GradientShap(classifier).attribute(inputs, baselines=-torch.ones_like(images[:1]), n_samples=20).detach()
    return saliency, shap


# ----------------------------------------------------------------------------- the steps, as the scripts run them

def ambiguity_parser(description: str, device: bool = True) -> argparse.ArgumentParser:
    """The flags every ambiguity step takes (and --device where the step runs networks)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="YAML file of the analysis (see configs/ambiguity/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set n_trials=5 (repeatable)")
    add_shared_arguments(parser, "seed", "data_root", data_root=TORCHVISION_ROOT, seed={
        "type": int, "default": None, "help": "seed of the sampling and the search (default: the config's)"})
    if device:
        add_device_argument(parser)
    add_output_arguments(parser)
    return parser


def step_paths(config: dict, results_dir: Path, figures_dir: Path) -> dict[str, Path]:
    folder = gasten_path(results_dir, "ambiguity", config["output"])
    return {"embeddings": folder / "embeddings.npz", "clustering": folder / "clustering.npz",
            "prototypes": folder / "prototypes.npz", "figures": gasten_path(figures_dir, "ambiguity_figures", config["output"])}


def _load(path: Path, script: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserInputError(f"{path} not found; make it first with {script}")
    return dict(np.load(path))


def generate_embeddings(config: dict, results_dir: Path, data_root: Path, device: torch.device,
                        settings: dict) -> dict[str, Any]:
    """Step 1: the ambiguous samples, their embeddings and probabilities, and the Frechet distances (own
    features) of all samples and of the ambiguous ones, to embeddings.npz."""
    generator, classifier, gasten = gasten_cell(config, results_dir, device)
    found = ambiguous_samples(generator, classifier, config["n_samples"], config["acd"], config["seed"])
    dataset = gasten["dataset"]
    pair = load_pair(dataset["name"], dataset["pos"], dataset["neg"], data_root, device)
    own = frechet_metric(feature_cnn(dataset["name"], data_root, results_dir, device), pair.train_x,
                         gasten_path(results_dir, "statistics"),
                         f"{dataset['name']}_{dataset['pos']}v{dataset['neg']}_own_features")
    kept = found["kept"]
    distances = {"fid_all": frechet_distance(own, found["images"]),
                 "fid_ambiguous": frechet_distance(own, found["images"][kept])
                 if int(kept.sum()) > FeatureCNN.num_features else float("nan")}
    with torch.no_grad():
        test_probabilities = classifier(pair.test_x)
    arrays = {"images": found["images"][kept].cpu().numpy(), "probabilities": found["probabilities"][kept].cpu().numpy(),
              "embeddings": found["embeddings"].cpu().numpy(), "test_embeddings": classifier.embed(pair.test_x).detach().cpu().numpy(),
              "test_probabilities": test_probabilities.cpu().numpy(), "test_images": pair.test_x.cpu().numpy(),
              "n_samples": np.array(config["n_samples"]), **{k: np.array(v) for k, v in distances.items()}}
    paths = step_paths(config, results_dir, ".")
    save_npz_with_settings(arrays, paths["embeddings"], {**settings, "config": config, "gasten": gasten})
    real = ((test_probabilities - 0.5).abs() <= config["acd"]).sum()
    return {"ambiguous": int(kept.sum()), "real_ambiguous": int(real), **distances}


def optimize_clustering(config: dict, results_dir: Path, settings: dict) -> dict[str, Any]:
    """Step 2: tune every option and keep the best, to clustering.npz."""
    paths = step_paths(config, results_dir, ".")
    embeddings = _load(paths["embeddings"], "ambiguity_generate_embeddings.py")["embeddings"]
    if len(embeddings) < 10:
        raise UserInputError(f"only {len(embeddings)} ambiguous samples: too few to cluster; raise n_samples or acd")
    results = [tune(embeddings, option, config["n_trials"], config["seed"]) for option in config["options"]]
    best = max(results, key=lambda result: result["score"])
    scores = {result["option"]: result["score"] for result in results}
    save_npz_with_settings({"labels": best["labels"], "reduced": best["reduced"], "option": np.array(best["option"])},
                           paths["clustering"], {**settings, "config": config, "scores": scores,
                                                 "params": {r["option"]: r["params"] for r in results}})
    return {"option": best["option"], "score": best["score"], "scores": scores, "params": best["params"],
            "clusters": len(set(best["labels"].tolist()) - {-1})}


def plot_images(images: np.ndarray, title: str, columns: int = 10, overlays: list[np.ndarray] | None = None) -> plt.Figure:
    columns = max(1, min(columns, len(images)))                  # no empty columns for a few images
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(max(columns * 0.9, 4.5), rows * 0.95 + 0.5), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, image in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(image[0], cmap="gray", vmin=-1, vmax=1)
        if overlays is not None:
            ax.imshow(overlays[i], cmap="inferno", alpha=0.55)
    fig.suptitle(title, fontsize=9)
    return fig


def prototypes(config: dict, results_dir: Path, figures_dir: Path, device: torch.device, settings: dict) -> dict[str, Any]:
    """Step 3: a medoid per cluster, the clustering's scores, and the figures."""
    paths = step_paths(config, results_dir, figures_dir)
    found = _load(paths["embeddings"], "ambiguity_generate_embeddings.py")
    clustering = _load(paths["clustering"], "ambiguity_optimize_clustering.py")
    embeddings, labels, reduced = found["embeddings"], clustering["labels"], clustering["reduced"]
    space = embeddings if config["prototype_space"] == "embedding" else reduced
    chosen = medoids(space, labels)
    report = clustering_report(embeddings, reduced, labels, chosen)
    _, classifier, _ = gasten_cell(config, results_dir, device)
    images = torch.from_numpy(found["images"]).to(device)
    figures = paths["figures"]
    for label in chosen:
        members = np.flatnonzero(labels == label)[:30]
        save_figure(plot_images(found["images"][members], f"cluster {label} ({int((labels == label).sum())} samples)"),
                    figures / f"cluster_{label}")
    rows = list(chosen.values())
    saliency, shap = attributions(classifier, images[rows], config["seed"])
    for name, maps in (("saliency", saliency.abs()), ("gradient_shap", shap.abs())):
        save_figure(plot_images(found["images"][rows], f"prototypes (medoids in the {config['prototype_space']} space) "
                                f"with {name.replace('_', ' ')}", overlays=list(maps[:, 0].cpu().numpy())),
                    figures / f"prototypes_{name}")
    rng = np.random.default_rng(config["seed"])
    uncertain = np.flatnonzero(np.abs(found["test_probabilities"] - 0.5) <= 0.1)
    baseline = rng.choice(uncertain, size=min(5, len(uncertain)), replace=False) if len(uncertain) else np.array([], int)
    save_figure(plot_images(found["test_images"][baseline], f"baseline: {len(baseline)} random real test images with "
                            f"C in [0.4, 0.6] (of {len(uncertain)})", columns=5), figures / "baseline_real")
    save_figure(plot_map(found, labels, rows, config["seed"]), figures / "map_2d")
    save_npz_with_settings({"prototype_indices": np.array(rows), "prototype_clusters": np.array(list(chosen)),
                            "baseline_test_indices": baseline}, paths["prototypes"],
                           {**settings, "config": config, "report": report})
    return report


def plot_map(found: dict[str, np.ndarray], labels: np.ndarray, prototypes: list[int], seed: int) -> plt.Figure:
    """A 2-D view: UMAP fitted on the pair's test embeddings (PCA when there are too few), the ambiguous
    samples coloured by cluster and the prototypes placed into it."""
    test = found["test_embeddings"]
    if len(test) > 20:
        import umap
        mapper = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1).fit(test)
    else:
        mapper = PCA(n_components=2).fit(test)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    flat = mapper.transform(test)
    ax.scatter(flat[:, 0], flat[:, 1], s=2, c=found["test_probabilities"], cmap="coolwarm", alpha=0.3)
    ambiguous = mapper.transform(found["embeddings"])
    ax.scatter(ambiguous[:, 0], ambiguous[:, 1], s=6, c=labels, cmap="tab10", marker="x")
    ax.scatter(ambiguous[prototypes, 0], ambiguous[prototypes, 1], s=80, facecolors="none", edgecolors="black")
    ax.set_title("test images (colour: C), ambiguous samples (x, by cluster), prototypes (circles)", fontsize=7)
    fig.tight_layout()
    return fig
