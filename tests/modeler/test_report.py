"""The run's report and metrics on a demo-like store: every table, metric and figure."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pytest
from rich.console import Console

from dtlr.services.modeler.run import RunResult, render_table3, run_modeler
from dtlr.shared.config import CNNSettings, Settings
from dtlr.shared.report import ReportSection, fmt_ci
from tests.synthetic.cohorts import SyntheticStore, build_store

METRICS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv")
LABELS = {"clinical": "Clinical model", "radiomics": "Radiomics model",
          "nomogram": "Clinical-radiomics nomogram"}


@dataclass
class Run:
    syn: SyntheticStore
    result: RunResult
    html: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    syn = build_store(tmp_path_factory.mktemp("report"), {"A": 140, "B": 70}, n_radiomics=60,
                      seed=3)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(np.eye(8))
    png = io.BytesIO()
    fig.savefig(png, format="png")
    extra = ReportSection("CNN fine-tuning", "<p id='cnn-extra'>CNN AUC 0.79</p>",
                          [(png.getvalue(), "Grad-CAM overlay"), (fig, "CNN training curve")])
    result = run_modeler(syn.store, "A", ["B"], Settings(), extra_sections=lambda: [extra])
    return Run(syn, result, result.report_path.read_text(encoding="utf-8"))


def test_report_is_one_self_contained_file_whose_first_line_states_the_protocol(
        run: Run) -> None:
    path = run.result.report_path
    assert path == run.syn.store.run_dir(run.result.run_id) / "report.html"
    body = run.html.split("<body>", 1)[1].lstrip()
    assert body.startswith('<p class="protocol">Protocol: leakage-safe.')
    assert not re.search(r'(src|href)="(https?:)?//', run.html)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', run.html)
    # ROC, calibration, DCA, nomogram, LASSO (Fig 2), heatmap (Fig 3), the extra section's 2.
    assert len(images) == 8
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_the_papers_tables_formulas_and_figures(run: Run) -> None:
    html = run.html
    for heading in ("Table 1.", "Table 2.", "Table 3.", "Table 4.", "Formula 1.",
                    "Hosmer-Lemeshow", "Decision thresholds", "Youden", "Fig 2 (Radiomics)",
                    "Fig 3 (Radiomics)", "ROC curves", "Calibration curves", "Decision curves",
                    "Clinical-radiomics nomogram (Fig 5A)", "Training set (A)", "Test set (B)"):
        assert heading in html, heading
    assert "Formula 2." not in html  # no DTL family in this store
    lasso = run.result.model.family_models_["radiomics"].named_steps["lasso"]
    assert f"Rad score = {lasso.intercept_:.4f}" in html
    assert f"{lasso.alpha_:.4g}" in html
    assert "id='cnn-extra'" in html and "Grad-CAM overlay" in html
    assert html.index("Deep transfer learning") < html.index("id='cnn-extra'")


def test_table3_in_the_report_matches_the_metrics(run: Run) -> None:
    t3 = run.result.table3
    assert len(t3) == 6  # 3 models x 2 cohorts
    for r in t3.itertuples():
        for metric in METRICS:
            text = fmt_ci(getattr(r, metric), getattr(r, f"{metric}_ci_low"),
                          getattr(r, f"{metric}_ci_high"), 4 if metric == "auc" else 3)
            assert text in run.html
            assert getattr(r, f"{metric}_ci_low") <= getattr(r, metric) <= getattr(
                r, f"{metric}_ci_high")


def test_metrics_view_has_every_model_cohort_and_metric(run: Run) -> None:
    with run.syn.store.connect() as con:
        df = con.execute("SELECT * FROM metrics WHERE run_id = ?", [run.result.run_id]).df()
    for cohort in ("A", "B"):
        for model in LABELS:
            rows = df[(df.cohort == cohort) & (df.model == model)].set_index("metric")
            for metric in (*METRICS, "threshold", "hosmer_lemeshow_p", "hosmer_lemeshow_chi2"):
                assert np.isfinite(rows.loc[metric, "value"]), (cohort, model, metric)
            for metric in METRICS:
                assert rows.loc[metric, "ci_low"] <= rows.loc[metric, "value"] <= rows.loc[
                    metric, "ci_high"]
            others = set(LABELS) - {model}
            assert {f"delong_p_vs_{o}" for o in others} <= set(rows.index)
    lam = df[df.metric == "lasso_lambda"]
    assert lam["value"].iloc[0] == pytest.approx(
        run.result.model.family_models_["radiomics"].named_steps["lasso"].alpha_)
    assert set(df.role) == {"train", "test"}


def test_nomogram_beats_the_clinical_model_on_the_test_cohort(run: Run) -> None:
    auc = run.result.table3.set_index(["cohort", "model"])["auc"]
    assert auc[("B", "nomogram")] > auc[("B", "clinical")]


def test_terminal_table3_lists_every_model_of_every_cohort(run: Run) -> None:
    console = Console(file=io.StringIO(), width=80)
    tables = render_table3(run.result.table3, console)
    out = console.file.getvalue()
    assert [t.row_count for t in tables] == [3, 3]
    for label in ("Clinical", "Radiomics", "Nomogram"):
        assert out.count(f"│ {label} ") == 2
    assert "Table 3, A (training, apparent)" in out and "Table 3, B (test)" in out
    assert "…" not in out  # nothing cropped in an 80-column terminal


def test_paper_protocol_is_stated_on_the_first_line(run: Run) -> None:
    paper = Settings(cnn=CNNSettings(protocol="paper"))
    result = run_modeler(run.syn.store, "A", ["B"], paper, run_id="paper-protocol")
    body = result.report_path.read_text(encoding="utf-8").split("<body>", 1)[1].lstrip()
    assert body.startswith('<p class="protocol">Protocol: paper.')
    assert "the nomogram was fitted on in-sample Rad/DTL scores" in body.split("</p>")[0]
    assert result.run_id == "paper-protocol"
    meta = json.loads((result.model_dir / "modeler.json").read_text(encoding="utf-8"))
    assert meta["protocol"] == "paper" and meta["protocol_record"]["nomogram_scores"] == \
        "in-sample"
    # The SVMs do not depend on the nomogram's scores: same AUCs as the leakage-safe run.
    same = run.result.table3["model"] != "nomogram"
    np.testing.assert_allclose(result.table3["auc"][same], run.result.table3["auc"][same])


def test_hosmer_lemeshow_df_is_g_minus_2_on_training_and_g_on_test(run: Run) -> None:
    with run.syn.store.connect() as con:
        df = con.execute("SELECT cohort, denominator FROM metrics WHERE run_id = ? AND metric = "
                         "'hosmer_lemeshow_chi2'", [run.result.run_id]).df()
    assert set(df[df.cohort == "A"]["denominator"]) == {8.0}  # 10 deciles - 2
    assert set(df[df.cohort == "B"]["denominator"]) == {10.0}  # external: 10 deciles
    assert "df = 8, p = " in run.html and "df = 10, p = " in run.html
    # 70 test patients in 10 groups: some deciles expect fewer than 5 events or non-events.
    assert "⚠ unreliable: " in run.html and "fewer than 5 expected events" in run.html
    assert "groups on each test set, an external validation sample" in run.html


def test_prevalence_setting_gives_population_ppv_npv_and_is_stated(run: Run) -> None:
    assert "PPV and NPV are computed at each cohort" in run.html
    settings = Settings.model_validate({"modeler": {"prevalence": 0.1}})
    result = run_modeler(run.syn.store, "A", ["B"], settings, run_id="prevalence")
    html = result.report_path.read_text(encoding="utf-8")
    assert "PPV and NPV are those of a population with 0.1 prevalence of high grade" in html
    assert "Mercaldo, Lau &amp; Zhou" in html
    assert "computed at a population prevalence of 0.1 (modeler.prevalence" in html
    t3, base = result.table3, run.result.table3
    for metric in ("auc", "accuracy", "sensitivity", "specificity"):
        np.testing.assert_allclose(t3[metric], base[metric])
    assert not np.allclose(t3["ppv"], base["ppv"])
    inner = t3[(t3.sensitivity > 0) & (t3.sensitivity < 1) & (t3.specificity > 0)
               & (t3.specificity < 1)]
    assert len(inner) > 0
    se, sp = inner["sensitivity"], inner["specificity"]
    np.testing.assert_allclose(inner["ppv"], se * 0.1 / (se * 0.1 + (1 - sp) * 0.9), rtol=1e-12)
    np.testing.assert_allclose(inner["npv"], sp * 0.9 / (sp * 0.9 + (1 - se) * 0.1), rtol=1e-12)
