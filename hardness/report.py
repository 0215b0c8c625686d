"""The visual answer: one self-contained HTML page of the most suspicious samples, each class's hardest samples by
every family of scores, the data map and the per-class counts, the settings and a link to the ranking CSV.

The page is rendered from hardness/templates/report.html.j2 by Jinja2 with autoescaping on: sample ids, class
names and file names come from the user's data and are text, never markup. Every image is inline (a data: URI
of a PNG), and a Content-Security-Policy forbids scripts and any load from outside the page, so it opens
offline and loads nothing. Images [N, C, H, W] are shown as thumbnails, each stretched to its own minimum and
maximum (the data are standardised, so the original scale is gone); tables [N, D] show their rows instead.
"""
import base64
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

import jinja2
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image
from torch import Tensor

from hardness.ranking import Ranking, available, consensus_members, rank_aggregate, suspicion_order
from hardness.results import write_atomically
from hardness.verdicts import VERDICTS, Verdicts

TEMPLATES = Path(__file__).resolve().parent / "templates"
FAMILIES = {"training dynamics": ("aum", "forgetting", "data_map", "el2n", "loss"),
            "gradients": ("vog", "grand"),
            "output uncertainty": ("confidence", "energy"),
            "latent geometry (stragglers)": ("stragglers",),
            "confident learning": ("cleanlab",)}          # family -> member scores (rankings or sets)
TABLE_COLUMNS = 12                                         # features shown of a table's row


def png_data_uri(image: Image.Image) -> str:
    """A PIL image as a data: URI of a PNG."""
    encoded = io.BytesIO()
    image.save(encoded, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(encoded.getvalue()).decode("ascii")


def figure_data_uri(fig: plt.Figure) -> str:
    """A matplotlib figure as a data: URI of a PNG; closes the figure."""
    encoded = io.BytesIO()
    fig.savefig(encoded, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(encoded.getvalue()).decode("ascii")


def thumbnail(sample: np.ndarray) -> Image.Image:
    """One standardised image [C, H, W] as a picture, stretched to its own minimum and maximum: greyscale for one
    channel, RGB for three, the mean of the channels for any other number."""
    low, high = float(sample.min()), float(sample.max())
    scaled = np.round(255 * (sample - low) / (high - low)) if high > low else np.zeros_like(sample)   # [C, H, W]
    if scaled.shape[0] == 3:
        return Image.fromarray(np.ascontiguousarray(scaled.transpose(1, 2, 0)).astype(np.uint8))    # RGB
    return Image.fromarray(scaled.mean(0).round().astype(np.uint8))                                 # greyscale


class SampleView:
    """What the page shows of samples: a thumbnail (images) or the first TABLE_COLUMNS values (tables), each made
    once however often the sample appears."""

    def __init__(self, data: Tensor, feature_names: Sequence[str] | None = None) -> None:
        self.data, self.cache = data, {}                    # data: [N, C, H, W] or [N, D]
        self.is_table = data.dim() == 2
        self.feature_names = feature_names

    def __call__(self, position: int) -> str | list[str]:
        if position not in self.cache:
            sample = self.data[position].detach().cpu().numpy()
            self.cache[position] = ([f"{value:.3g}" for value in sample[:TABLE_COLUMNS]] if self.is_table
                                    else png_data_uri(thumbnail(sample)))
        return self.cache[position]

    def header(self) -> list[str]:
        """Column names of a table's shown values (x0, x1, ... where the source names none), with the number
        left out."""
        if not self.is_table:
            return []
        width = self.data.shape[1]
        names = list(self.feature_names) if self.feature_names is not None else [f"x{j}" for j in range(width)]
        return names[:TABLE_COLUMNS] + ([f"(+{width - TABLE_COLUMNS})"] if width > TABLE_COLUMNS else [])


def family_orders(scores: dict[str, np.ndarray], labels: np.ndarray, num_classes: int,
                  per_class: int) -> dict[str, list[list[int]]]:
    """Each family present (the consensus first) -> for every class, the positions of its `per_class` hardest
    samples by the family's rank aggregate, most suspicious first."""
    families = {"likely mislabelled (consensus)": consensus_members(scores),
                **{family: available(scores, members) for family, members in FAMILIES.items()}}
    orders = {}
    for family, members in families.items():
        if members:
            order = suspicion_order(rank_aggregate(scores, members))                   # [N]
            orders[family] = [order[labels[order] == c][:per_class].tolist() for c in range(num_classes)]
    return orders


def verdict_sections(verdicts: Verdicts, ranking: Ranking, card: Callable[[int], dict], shown: int) -> list[dict]:
    """One section per verdict other than ok: how many samples got it and the first `shown` of them in the ranking's
    order (the most out of distribution first for that verdict), each card with the scores that decided it and, for
    a duplicate, the card of the other member of its pair."""
    sections = []
    for name in VERDICTS[:-1]:
        members = np.flatnonzero(verdicts.verdict == name)
        if name == "out_of_distribution":
            members = members[np.argsort(verdicts.outlier_rank[members], kind="stable")]
        else:
            position = np.empty(len(ranking.order), dtype=np.int64)
            position[ranking.order] = np.arange(len(ranking.order))
            members = members[np.argsort(position[members], kind="stable")]
        cards = []
        for i in members[:shown].tolist():
            entry = {**card(i), "evidence": [(key, f"{value:.3g}") for key, value in verdicts.deciding[i].items()]}
            partner = int(verdicts.duplicate_of[i])
            entry["partner"] = card(partner) if partner >= 0 else None
            cards.append(entry)
        sections.append({"verdict": name, "title": name.replace("_", " "), "count": len(members), "cards": cards})
    return sections


def render_report(ranking: Ranking, scores: dict[str, np.ndarray], data: Tensor, labels: np.ndarray,
                  class_names: Sequence[str], title: str, settings: dict, csv_name: str,
                  figures: dict[str, plt.Figure], top: int = 60, per_class: int = 6,
                  feature_names: Sequence[str] | None = None, verdicts: Verdicts | None = None,
                  per_verdict: int = 24) -> str:
    """The page as HTML text: the `top` most suspicious samples, a section per verdict (its first `per_verdict`
    samples) where `verdicts` are given, each class's `per_class` hardest by every family, the figures (title ->
    figure, closed here), the settings and a relative link to `csv_name`."""
    view = SampleView(data, feature_names)
    columns = ranking.columns
    member_ranks = [name for name in ranking.members if f"{name}_rank" in columns]

    def card(position: int) -> dict:
        return {"id": columns["sample_id"][position], "given": columns["given_label"][position],
                "predicted": columns["predicted_label"][position], "rank": columns["consensus_rank"][position],
                "flipped": columns["flipped"][position] if "flipped" in columns else None,
                "ranks": [(name, columns[f"{name}_rank"][position]) for name in member_ranks],
                "view": view(position)}
    orders = family_orders(scores, labels, len(class_names), per_class)
    classes = [{"name": name, "count": int((labels == c).sum()),
                "families": [{"family": family, "cards": [card(p) for p in by_class[c]]}
                             for family, by_class in orders.items()]} for c, name in enumerate(class_names)]
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                     undefined=jinja2.StrictUndefined)
    sections = verdict_sections(verdicts, ranking, card, per_verdict) if verdicts is not None else []
    return environment.get_template("report.html.j2").render(
        verdicts=sections, verdict_notes=verdicts.notes if verdicts is not None else [], title=title, is_table=view.is_table, header=view.header(), members=ranking.members,
        top=[card(p) for p in ranking.order[:top].tolist()], classes=classes, families=list(orders),
        figures=[{"title": name, "uri": figure_data_uri(fig)} for name, fig in figures.items()],
        settings=[(key, value if isinstance(value, str) else repr(value)) for key, value in settings.items()],
        csv_name=csv_name, csv_href="./" + quote(csv_name, safe=""), samples=len(labels))


def write_report(path: Path, html: str) -> None:
    """The page to `path`, atomically."""
    write_atomically(path, html.encode())
