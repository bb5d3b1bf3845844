"""The run's self-contained HTML report: the paper's tables, formulas and figures.

One file, figures embedded as base64 PNG. The first line states the protocol. Later stages add
their own sections (the GPU stage: the CNN's own metrics and Grad-CAM overlays) by passing
:class:`ReportSection` objects as ``extra_sections``; they appear under "Deep transfer learning".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dtlr.services.modeler import figures
from dtlr.services.modeler.clinical import display_name, group_comparison
from dtlr.services.modeler.data import CohortData
from dtlr.services.modeler.evaluate import CohortEvaluation, delong_matrix
from dtlr.services.modeler.icc import ICC_FORMS
from dtlr.services.modeler.models import DTLRModel, family_columns, model_label
from dtlr.services.modeler.nomogram import draw_nomogram, predictor_label
from dtlr.shared.report import ReportSection, esc, figure_html, fmt_ci, fmt_p, html_table
from dtlr.shared.stats import HosmerLemeshow

FAMILY_LABELS = {"radiomics": "Radiomics", "dtl": "DTL"}
SCORE_TITLES = {"radiomics": ("Formula 1", "Rad score"), "dtl": ("Formula 2", "DTL score")}
_CSS = """
body{font-family:Helvetica,Arial,sans-serif;max-width:1200px;margin:1.5em auto;color:#222;
font-size:14px;line-height:1.4}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:2px;
margin-top:2em}h3{font-size:15px}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:12.5px}
th,td{padding:3px 9px;text-align:left}
table.paper{border-top:2px solid #000;border-bottom:2px solid #000}
table.paper thead tr:last-child th{border-bottom:1px solid #000}
tr.group td{font-weight:bold;padding-top:8px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
p.protocol{font-weight:bold;background:#fff6d5;padding:6px 10px;border-left:4px solid #e0a800}
p.note{color:#7a4b00}
code,.formula{font-family:Menlo,Consolas,monospace;font-size:12.5px}
.formula{background:#f4f4f4;padding:8px;white-space:pre-wrap;word-break:break-word}
figure{margin:1em 0}figcaption{font-size:12.5px;color:#444}
img{max-width:100%}
"""


@dataclass
class ReportInputs:
    """Everything the report shows."""

    run_id: str
    created: str
    protocol: str  # the first line: what was done, from the records (modeler/protocol.py)
    model: DTLRModel
    train: CohortData
    tests: list[CohortData]
    evaluations: list[CohortEvaluation]
    table3: pd.DataFrame
    settings: dict[str, object]
    versions: dict[str, str]
    extra_sections: Sequence[ReportSection] = ()


def hl_cell(hl: HosmerLemeshow) -> str:
    """A Hosmer-Lemeshow result for the report's table, its warnings beside the number."""
    chi2 = "∞" if np.isinf(hl.chi2) else f"{hl.chi2:.2f}"
    text = f"χ² = {chi2}, df = {hl.df}, p = {hl.p:.3f}"
    if hl.warnings:  # each warning's first clause; the paragraph below the table explains
        text += " ⚠ unreliable: " + "; ".join(w.split("; ")[0] for w in hl.warnings)
    return text


def cohort_title(role: str, cohort: str) -> str:
    """'Training set (A), apparent' / 'Test set (B)', as the paper's tables head their groups;
    training numbers are apparent: measured on the patients the models were fitted on."""
    return f"Training set ({cohort}), apparent" if role == "train" else f"Test set ({cohort})"


class _Report:
    """Builds the report's sections in the paper's order."""

    def __init__(self, inp: ReportInputs) -> None:
        self.inp = inp
        self.model = inp.model
        self.labels = {m: model_label(m, self.model.families_) for m in self.model.model_names}
        self.parts: list[str] = []

    def h2(self, title: str) -> None:
        """A section heading."""
        self.parts.append(f"<h2>{esc(title)}</h2>")

    def p(self, text: str, cls: str = "") -> None:
        """A paragraph of plain text (``cls="note"`` for fallbacks and warnings)."""
        self.parts.append(f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>")

    def overview(self) -> None:
        """Run, cohorts, feature families, and any patients left out."""
        inp = self.inp
        tests = ", ".join(t.cohort for t in inp.tests)
        self.parts.append(f"<h1>DTLR modeler report — run {esc(inp.run_id)}</h1>")
        rows = [["Run", inp.run_id], ["Created", inp.created],
                ["Training cohort", f"{inp.train.cohort} (n = {inp.train.n}, "
                                    f"{int(inp.train.y.sum())} high grade)"]]
        for t in inp.tests:
            rows.append([f"Test cohort {t.cohort}",
                         f"n = {t.n}, {int(t.y.sum())} high grade"])
        rows.append(["Feature families", ", ".join(["clinical", *self.model.families_])])
        if inp.train.dtl_model_id:
            rows.append(["CNN (DTL features)", inp.train.dtl_model_id])
        else:
            rows.append(["DTL features", "none in this run: clinical, radiomics and "
                                         "nomogram models only"])
        self.parts.append(html_table(["", ""], rows, numeric_from=9))
        for d in [inp.train, *inp.tests]:
            for msg in d.excluded:
                self.p(f"Cohort {d.cohort}: {msg}", "note")
        self.p(f"Training {inp.train.cohort}; tests {tests}. Label: high grade (WHO 2-3) = 1.")

    def table1(self) -> None:
        """Table 1: clinical features by grade, one column group per cohort."""
        self.h2("Table 1. Clinical features of the two grades in each cohort")
        cohorts = [(self.inp.train, "train"), *[(t, "test") for t in self.inp.tests]]
        comps = [group_comparison(d.clinical, d.y) for d, _ in cohorts]
        header = ["", *[h for _ in cohorts for h in ("Low grade", "High grade", "p")]]
        top = [("", 1), *[(cohort_title(role, d.cohort), 3) for d, role in cohorts]]
        rows = []
        for i, label in enumerate(comps[0]["label"]):
            row = [label]
            for c in comps:
                r = c.iloc[i]
                row += [r["low_grade"], r["high_grade"], fmt_p(r["p"])]
            rows.append(row)
        self.parts.append(html_table(header, rows, top=top))
        self.p("Continuous variables: mean ± SD, Welch's t test; categorical: counts "
               "(level 0 : level 1), chi-square test with Yates' correction. Missing values are "
               "left out per variable.")

    def table2(self) -> None:
        """Table 2: univariable and multivariable logistic regression (training)."""
        sel = self.model.clinical_.named_steps["select"]
        t = sel.table()
        self.h2("Table 2. Univariable and multivariable logistic regression of clinical "
                "features (training set)")

        def cells(r: pd.Series, side: str) -> list[str]:
            method = r[f"{side}_method"]
            if method == "aliased":
                return ["aliased (not estimable)", ""]
            if not np.isfinite(r[f"{side}_p"]):  # constant, or did not enter the model
                return ["-", "-"] if side == "uni" else ["", ""]
            mark = " †" if method == "firth" else ""
            bounds = [f"{r[f'{side}_ci_{b}']:.3f}" if np.isfinite(r[f"{side}_ci_{b}"]) else "?"
                      for b in ("low", "high")]  # ?: a profile bound that did not converge
            return [f"{r[f'{side}_odds_ratio']:.3f} ({bounds[0]}–{bounds[1]}){mark}",
                    fmt_p(r[f"{side}_p"]) + mark]

        rows = [[display_name(r["feature"]), *cells(r, "uni"), *cells(r, "multi"),
                 "yes" if r["selected"] else ""] for _, r in t.iterrows()]
        self.parts.append(html_table(["Feature", "Univariable OR (95% CI)", "p",
                                  "Multivariable OR (95% CI)", "p", "Selected"], rows))
        chosen = ", ".join(display_name(f) for f in sel.get_feature_names_out())
        self.p(f"Features with univariable p < {sel.p_threshold:g} entered the multivariable "
               f"model; those with multivariable p < {sel.p_threshold:g} were selected: "
               f"{chosen}. The paper reports Cox log(HR); for a binary grade the matching model "
               "is logistic regression, shown as odds ratios with 95% CIs: maximum likelihood "
               "with Wald tests and CIs, unless marked.")
        methods = {m for side in ("uni", "multi") for m in t[f"{side}_method"]}
        legend = []
        if "firth" in methods:
            legend.append("† Firth's penalised likelihood (Heinze & Schemper 2002, as R's "
                          "logistf): p from the penalised likelihood-ratio test, 95% CI from "
                          "the profile penalised likelihood; used where the data are "
                          "separated (some maximum-likelihood estimate is infinite, by Konis' "
                          "linear program: the Wald p would tend to 1) or maximum likelihood "
                          "did not converge.")
        if any("?" in c for row in rows for c in row):
            legend.append("?: a profile-likelihood CI bound that could not be found.")
        if "aliased" in methods:
            legend.append("Aliased: an exact linear combination of the other features in that "
                          "model, left out of it (R's glm reports NA).")
        if legend or sel.note_:
            self.p(" ".join([*legend, *([f"Details: {sel.note_}."] if sel.note_ else [])]),
                   "note")

    def selection(self) -> None:
        """Per family: features left after each step, lambda, formula, Figs 2 and 3."""
        self.h2("Radiomics and DTL feature selection")
        for family in self.model.families_:
            pipe = self.model.family_models_[family]
            icc, fin, sp, lasso = (pipe.named_steps[s] for s in
                                   ("icc", "finite", "spearman", "lasso"))
            label = FAMILY_LABELS[family]
            self.parts.append(f"<h3>{label} features</h3>")
            rows = [["Extracted", str(icc.n_features_in_)],
                    [f"ICC >= {icc.threshold:g} ({icc.form})", str(int(icc.support_.sum()))],
                    ["Finite and non-constant in training", str(int(fin.support_.sum()))],
                    [f"Spearman |rho| <= {sp.threshold:g} (better AUC kept)",
                     str(int(sp.support_.sum()))],
                    ["LASSO non-zero", str(int(lasso.support_.sum()))],
                    ["LASSO lambda (alpha)", f"{lasso.alpha_:.4g}"]]
            self.parts.append(html_table(["Step", "Features"], rows))
            self.p(icc.note_)
            if lasso.note_:
                self.p(f"Fallback: {lasso.note_}.", "note")
            self.formula(family)
            self.parts.append(figure_html(figures.lasso_figure(pipe, label),
                                      f"Fig 2 ({label}). LASSO: {lasso.mse_path_.shape[1]}-fold "
                                      "cross-validated error (mean ± SE) and coefficient paths; "
                                      "dashed line = chosen lambda."))
            names, _, _, _ = self.selected(family)
            values = pipe[:-1].transform(family_columns(self.inp.train.X, family))
            self.parts.append(figure_html(figures.correlation_figure(values, names, label),
                                      f"Fig 3 ({label}). Spearman correlation of the selected "
                                      "features in the training set."))
        self.p(f"ICC form: {ICC_FORMS[self.model.icc_form]} (Koo & Li 2016 recommend it for "
               "inter-rater reliability). Spearman criterion: of two features with |rho| above "
               "the threshold the one with the larger univariable |AUC - 0.5| is kept. LASSO: "
               "least squares on the 0/1 label with cross-validated lambda (sklearn LassoCV, "
               "the scale of the paper's lambdas 0.0193 and 0.0687).")

    def selected(self, family: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Selected feature names, LASSO coefficients, training means and SDs."""
        pipe = self.model.family_models_[family]
        sp, lasso, z = (pipe.named_steps[s] for s in ("spearman", "lasso", "zscore"))
        names = list(pipe[:-1].get_feature_names_out())
        idx = np.flatnonzero(sp.support_)[lasso.support_]
        return names, lasso.coef_[lasso.support_], z.mean_[idx], z.scale_[idx]

    def formula(self, family: str) -> None:
        """Formula 1 / 2: the score as intercept + coefficients x z-scored features."""
        number, score = SCORE_TITLES[family]
        lasso = self.model.family_models_[family].named_steps["lasso"]
        names, coef, mean, sd = self.selected(family)
        terms = " ".join(f"{'−' if c < 0 else '+'} {abs(c):.4f} × z({n})"
                         for n, c in zip(names, coef, strict=True))
        self.parts.append(f"<p><b>{number}.</b></p><div class='formula'>{esc(score)} = "
                          f"{lasso.intercept_:.4f} {esc(terms)}</div>")
        rows = [[n, f"{c:+.4f}", f"{m:.6g}", f"{s:.6g}"]
                for n, c, m, s in zip(names, coef, mean, sd, strict=True)]
        self.parts.append(html_table(["Feature", "Coefficient", "Training mean", "Training SD"],
                                 rows))
        self.p("z(feature) = (feature − training mean) / training SD.")

    def models(self) -> None:
        """The SVMs, the nomogram's coefficients and formula, the decision thresholds."""
        self.h2("Models")
        m = self.model
        clinical = ", ".join(display_name(f) for f in
                             m.clinical_.named_steps["select"].get_feature_names_out())
        self.p(f"Clinical model: SVM ({m.svm_kernel} kernel, C = {m.svm_c:g}) on {clinical} "
               "(training-median imputed, z-scored). Radiomics/DTL models: the same SVM on each "
               "family's LASSO-selected features. SVM probabilities are Platt-scaled on "
               f"{m.platt_cv_folds}-fold stratified cross-validation of the training set.")
        lbl = self.labels["nomogram"]
        coef = m.nomogram_coef_
        rows = [[predictor_label(n), f"{c:+.4f}", f"{np.exp(c):.4g}"]
                for n, c in zip(m.nomogram_features_, coef, strict=True)]
        self.parts.append(f"<h3>{esc(lbl)}: logistic regression (training set)</h3>")
        self.parts.append(html_table(["Predictor", "Coefficient", "OR per unit"], rows))
        terms = " ".join(f"{'−' if c < 0 else '+'} {abs(c):.4f} × {predictor_label(n)}"
                         for n, c in zip(m.nomogram_features_, coef, strict=True))
        self.parts.append(f"<div class='formula'>logit(P(high grade)) = "
                          f"{m.nomogram_intercept_:.4f} {esc(terms)}</div>")
        penalty = ("unpenalised maximum likelihood" if m.nomogram_c is None else
                   f"L2 penalty C = {m.nomogram_c:g} on z-scored predictors, coefficients "
                   "shown in natural units")
        self.p(f"Fit: {penalty}. Predictors in natural units (clinical findings 0/1, age in "
               "years, size in mm); missing clinical values take the training median.")
        rows = [[self.labels[k], f"{v:.4f}"] for k, v in m.thresholds_.items()]
        self.parts.append("<h3>Decision thresholds</h3>")
        self.parts.append(html_table(["Model", "Threshold (P ≥)"], rows))
        if m.thresholds_from_.startswith("out-of-fold"):
            self.p("Each model's threshold maximises Youden's J (sensitivity + specificity − 1) "
                   "on its out-of-fold training predictions: every training patient predicted by "
                   "the whole pipeline (selection, SVMs, nomogram) refitted on seeded stratified "
                   f"folds without that patient ({m.thresholds_from_}). The same threshold is "
                   "applied to the training set and every test cohort.")
        else:
            self.p("Each model's threshold maximises Youden's J (sensitivity + specificity − 1) "
                   f"on its {m.thresholds_from_}; they are optimistic.", "note")

    def table3(self) -> None:
        """Table 3: every metric with its 95% CI, per cohort and model."""
        self.h2("Table 3. Performance of the clinical, radiomics, DTL models and the nomogram")
        rows, groups = self.by_cohort(lambda r: [
            fmt_ci(r.accuracy, r.accuracy_ci_low, r.accuracy_ci_high),
            fmt_ci(r.auc, r.auc_ci_low, r.auc_ci_high, 4),
            f"{r.auc_corrected:.4f}" if np.isfinite(r.auc_corrected) else "-",  # training only
            *[fmt_ci(getattr(r, k), getattr(r, f"{k}_ci_low"), getattr(r, f"{k}_ci_high"))
              for k in ("sensitivity", "specificity", "ppv", "npv")]])
        self.parts.append(html_table(["", "Accuracy (95% CI)", "AUC (95% CI)",
                                  "AUC, optimism-corrected", "Sensitivity (95% CI)",
                                  "Specificity (95% CI)", "PPV (95% CI)", "NPV (95% CI)"],
                                 rows, groups=groups))
        self.p("AUC CI: DeLong; proportions: Wilson score intervals; thresholds from out-of-fold "
               "training predictions (Youden).")
        self.p(self.optimism_note())
        for ev in self.inp.evaluations:
            for note in ev.notes():
                self.p(f"{cohort_title(ev.role, ev.cohort)}: undefined (-) where {note}.",
                       "note")
        self.p(self.prevalence_note("ppv"))

    def by_cohort(self, cells: Callable[[Any], list[str]]
                  ) -> tuple[list[list[str]], dict[int, str]]:
        """Table 3's rows, one per model under a heading per cohort: the model's label, then
        ``cells(row)``; and the headings for :func:`html_table`'s ``groups``."""
        rows: list[list[str]] = []
        groups: dict[int, str] = {}
        for (cohort, role), part in self.inp.table3.groupby(["cohort", "role"], sort=False):
            groups[len(rows)] = cohort_title(role, cohort)
            rows.extend([self.labels[r.model], *cells(r)] for r in part.itertuples())
        return rows, groups

    def optimism_note(self) -> str:
        """How the training AUCs were corrected for optimism, or that they were not."""
        train = self.inp.evaluations[0]
        o = train.optimism
        if o is None:
            return ("Training numbers are apparent; no bootstrap optimism correction was run "
                    "(modeler.optimism_bootstraps = 0).")
        return (f"Training numbers are apparent: measured on the patients the models were "
                f"fitted on. The optimism-corrected AUC is Harrell's bootstrap correction "
                f"(Harrell, Lee & Mark 1996; rms::validate): the whole pipeline refitted on "
                f"{o.used} of {o.bootstraps} bootstrap samples of the training set (seed "
                f"{o.seed}; a sample with too few patients of a grade for the pipeline's "
                "cross-validations cannot be fitted), "
                "apparent AUC minus the mean of (AUC on the sample − AUC on the training set).")

    def table4(self) -> None:
        """Table 4: paired DeLong p-values, one matrix per cohort."""
        self.h2("Table 4. DeLong test between every pair of models (p-values)")
        for ev in self.inp.evaluations:
            mat = delong_matrix(ev)
            rows = [[self.labels[a], *["-" if a == b or not np.isfinite(mat.loc[a, b])
                                       else f"{mat.loc[a, b]:.4f}" for b in mat.columns]]
                    for a in mat.index]
            self.parts.append(f"<h3>{esc(cohort_title(ev.role, ev.cohort))}</h3>")
            self.parts.append(html_table(["", *[self.labels[b] for b in mat.columns]], rows))

    def hosmer(self) -> None:
        """Hosmer-Lemeshow chi-square, df and p per model and cohort."""
        self.h2("Hosmer-Lemeshow goodness of fit")
        evs = self.inp.evaluations
        rows = []
        for m in self.model.model_names:
            row = [self.labels[m]]
            for ev in evs:
                hl = ev.hosmer_lemeshow[m]
                row.append("-" if hl is None else hl_cell(hl))
            rows.append(row)
        self.parts.append(html_table(["", *[cohort_title(e.role, e.cohort) for e in evs]], rows))
        self.p("Deciles of predicted risk (ResourceSelection::hoslem.test grouping); "
               "p > 0.05 means no evidence of miscalibration. Degrees of freedom: groups − 2 on "
               "the training set, where the models were fitted, and groups on each test set, an "
               "external validation sample from which nothing was estimated (Hosmer, Lemeshow & "
               "Sturdivant 2013, Applied Logistic Regression, 3rd ed., chapter 5). A warning "
               "beside a result means its chi-square approximation is unreliable: groups with "
               "fewer than 5 expected events or non-events, fewer than 5 patients per group, or "
               "risks of exactly 0 or 1.")

    def calibration(self) -> None:
        """Calibration intercept and slope with 95% CIs per model and cohort."""
        self.h2("Calibration intercept and slope")
        rows, groups = self.by_cohort(lambda r: [
            fmt_ci(r.calibration_intercept, r.calibration_intercept_ci_low,
                   r.calibration_intercept_ci_high),
            fmt_ci(r.calibration_slope, r.calibration_slope_ci_low, r.calibration_slope_ci_high)])
        self.parts.append(html_table(["", "Intercept (95% CI)", "Slope (95% CI)"], rows,
                                     groups=groups))
        self.p("Slope: b of logit P(high grade) = a + b · logit(risk) (1 is ideal; below 1 the "
               "risks are too extreme). Intercept: calibration-in-the-large, a with the slope "
               "fixed at 1 (0 is ideal; above 0 the risks are too low on average). Maximum-"
               "likelihood logistic fits with Wald 95% CIs (Van Calster et al. 2016, J Clin "
               "Epidemiol 74:167). Undefined (-) for a cohort with one grade, risks of exactly 0 "
               "or 1, or, for the slope, risks that separate the grades (its estimate is "
               "infinite). SVM risks are Platt-scaled, so their training slopes are near 1 by "
               "construction.")

    def curves(self) -> None:
        """ROC, calibration and decision curves (Figs 5B, 5C, 6)."""
        evs, labels = self.inp.evaluations, self.labels
        self.h2("ROC, calibration and decision curves")
        self.parts.append(figure_html(figures.roc_figure(evs, labels), "ROC curves (Fig 5B)."))
        self.parts.append(figure_html(figures.calibration_figure(evs, labels),
                                  "Calibration curves: observed fraction of high grade vs mean "
                                  "predicted risk per decile of predicted risk (Fig 5C)."))
        self.parts.append(figure_html(figures.dca_figure(evs, labels),
                                  "Decision curves: net benefit of each model, treat-all and "
                                  "treat-none (Fig 6)."))
        self.p(self.prevalence_note("dca"))

    def prevalence(self) -> float | None:
        """The population prevalence behind PPV, NPV and the decision curves (None: own)."""
        return next((ev.prevalence for ev in self.inp.evaluations), None)

    def prevalence_note(self, part: str) -> str:
        """The sentence under Table 3 ("ppv") or the decision curves ("dca") on prevalence."""
        prev = self.prevalence()
        own = ", ".join(f"{ev.cohort} {ev.y.mean():.0%}" for ev in self.inp.evaluations)
        if prev is None:
            what = "PPV and NPV are" if part == "ppv" else "Net benefit is"
            return (f"{what} computed at each cohort's own prevalence of high grade ({own}); "
                    "for case-control or grade-matched cohorts (the paper matched the grades "
                    "1:1) set modeler.prevalence to the population's prevalence.")
        if part == "ppv":
            return (f"PPV and NPV are those of a population with {prev:.4g} prevalence of high "
                    f"grade (modeler.prevalence; the cohorts' own: {own}): Bayes' theorem on the "
                    "sensitivity and specificity, with the logit CIs of Mercaldo, Lau & Zhou "
                    "(2007; adjusted-logit estimate and CI when a cell of the 2×2 table is 0, "
                    "as bdpv). Accuracy, sensitivity and specificity are the cohorts' own.")
        return (f"Net benefit and treat-all are computed at a population prevalence of "
                f"{prev:.4g} (modeler.prevalence; the cohorts' own: {own}), as dcurves does for "
                "case-control data: NB = Se(pt)·prevalence − pt/(1 − pt)·(1 − Sp(pt))·(1 − "
                "prevalence), with each model's risks used as predicted.")

    def nomogram(self) -> None:
        """The nomogram figure (Fig 5A) and how its scale is built."""
        self.h2(f"The {self.labels['nomogram']} (Fig 5A)")
        axis = "display" if self.inp.settings.get("nomogram_axes") == "datadist" else "full"
        self.parts.append(figure_html(draw_nomogram(self.model, self.labels["nomogram"], axis),
                                  "Nomogram: read each predictor's points on the top scale, add "
                                  "them, and read the risk of high grade below the total."))
        self.p("Scale as R's rms draws it: the predictor with the widest range of linear-"
               "predictor contribution (training range) spans 0-100 points; every axis uses the "
               "same points per unit of log-odds, so total points map linearly to log-odds.")

    def extra(self) -> None:
        """The GPU stage's sections (CNN metrics, Grad-CAM), or a note that there are none."""
        self.h2("Deep transfer learning: the CNN and Grad-CAM")
        if not self.inp.extra_sections:
            self.p("No CNN section supplied for this run (the GPU stage adds the fine-tuned "
                   "CNN's own metrics and Grad-CAM overlays here).")
        for sec in self.inp.extra_sections:
            self.parts.append(f"<h3>{esc(sec.title)}</h3>{sec.html}")
            for fig, caption in sec.figures:
                self.parts.append(figure_html(fig, caption))

    def provenance(self) -> None:
        """Input content keys, settings and library versions."""
        self.h2("Provenance")
        keys = {d.cohort: d.input_keys for d in [self.inp.train, *self.inp.tests]}
        rows = [[c, ", ".join(f"{k} {v}" for k, v in ks.items())] for c, ks in keys.items()]
        self.parts.append(html_table(["Cohort", "Input content keys"], rows, numeric_from=9))
        rows = [[k, str(v)] for k, v in self.inp.settings.items()]
        rows += [[k, v] for k, v in self.inp.versions.items()]
        self.parts.append(html_table(["Setting / library", "Value"], rows, numeric_from=9))

    def render(self) -> str:
        """The whole document, protocol line first."""
        self.overview()
        self.table1()
        self.table2()
        self.selection()
        self.models()
        self.table3()
        self.table4()
        self.hosmer()
        self.calibration()
        self.curves()
        self.nomogram()
        self.extra()
        self.provenance()
        protocol = self.inp.protocol
        return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
                f"<title>DTLR report {esc(self.inp.run_id)}</title><style>{_CSS}</style></head>"
                f'<body>\n<p class="protocol">{esc(protocol)}</p>\n'
                + "\n".join(self.parts) + "\n</body></html>\n")


def render_report(inputs: ReportInputs) -> str:
    """The report as one HTML string (figures embedded)."""
    return _Report(inputs).render()
