"""The leaderboard as one self-contained, offline HTML file.

Tabs (main / detail / calibration / fairness / references / left out), click-to-sort headers, filters by task,
dataset and licence, plots embedded as data: URLs, each cell's provenance (sources, seeds, config and split
hash, p-values, rank interval) on hover. No network access: no external script, style sheet or font.

State can also be set from the URL fragment, which is how the headless-browser test drives it:
``#tab=detail&sort=-<column key>&task=probe&dataset=ham10000&licence=commercial&selftest`` (``selftest``
writes the rendered geometry -- visible headers and rows -- as JSON into ``<pre id="selftest-out">``).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Sequence

from dermbench.report import labels

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}.bar{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin:.6em 0}
.tabs button{border:1px solid #bbb;background:#f6f6f6;padding:5px 12px;cursor:pointer;border-radius:4px 4px 0 0}
.tabs button.on{background:#fff;border-bottom-color:#fff;font-weight:600}
section{display:none;border-top:1px solid #bbb;padding-top:.8em}section.on{display:block}
table{border-collapse:collapse;font-size:13px;margin-bottom:1.2em}
th,td{border:1px solid #ccc;padding:4px 8px;white-space:nowrap}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
td.best{font-weight:bold;background:#e8f5e9}td.ns{background:#f5fbf5}td.na{color:#999}
.hidden{display:none!important}.notes{font-size:12px;color:#555;max-width:75em}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.warn{color:#b00020;font-weight:600}
"""

_JS = r"""
(function(){
function $(s,r){return (r||document).querySelector(s);}function $$(s,r){return Array.prototype.slice.call((r||document).querySelectorAll(s));}
var state={tab:'main',sort:null,task:'',dataset:'',licence:''};
function showTab(t){$$('section[data-tab]').forEach(function(s){s.classList.toggle('on',s.getAttribute('data-tab')===t);});
 $$('.tabs button').forEach(function(b){b.classList.toggle('on',b.getAttribute('data-tab')===t);});state.tab=t;}
$$('.tabs button').forEach(function(b){b.addEventListener('click',function(){showTab(b.getAttribute('data-tab'));});});
function val(td){var v=td.getAttribute('data-v');if(v===null||v===''){return null;}var f=parseFloat(v);return isNaN(f)?v.toLowerCase():f;}
function sortTable(table,col,desc){var heads=table.tHead.rows[0].cells;var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){var x=val(a.cells[col]),y=val(b.cells[col]);if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
  var r=(typeof x==='number'&&typeof y==='number')?x-y:String(x).localeCompare(String(y));return desc?-r:r;});
 rows.forEach(function(r){body.appendChild(r);});for(var i=0;i<heads.length;i++){heads[i].classList.remove('asc','desc');}
 heads[col].classList.add(desc?'desc':'asc');table.setAttribute('data-sorted',heads[col].getAttribute('data-key')+(desc?':desc':':asc'));}
$$('table.board').forEach(function(table){var heads=table.tHead.rows[0].cells;for(var i=0;i<heads.length;i++){(function(i){
 heads[i].addEventListener('click',function(){sortTable(table,i,heads[i].classList.contains('asc'));});})(i);}});
function applyFilters(){
 $$('[data-task],[data-commercial]').forEach(function(el){var t=el.getAttribute('data-task'),d=el.getAttribute('data-dataset'),c=el.getAttribute('data-commercial');
  var okT=t===null||!state.task||t===state.task;var okD=d===null||d===''||!state.dataset||d===state.dataset;
  var okL=c===null||!state.licence||(state.licence==='commercial'?c==='1':c==='0');el.classList.toggle('hidden',!(okT&&okD&&okL));});}
['task','dataset','licence'].forEach(function(k){var s=$('#f-'+k);if(s){s.addEventListener('change',function(){state[k]=s.value;applyFilters();});}});
function fromHash(){var h=decodeURIComponent((location.hash||'').replace(/^#/,''));var kv={};
 h.split('&').forEach(function(p){if(!p)return;var i=p.indexOf('=');if(i<0){kv[p]=true;}else{kv[p.slice(0,i)]=p.slice(i+1);}});
 if(kv.tab){showTab(kv.tab);}['task','dataset','licence'].forEach(function(k){if(typeof kv[k]==='string'){state[k]=kv[k];var s=$('#f-'+k);if(s){s.value=kv[k];}}});
 applyFilters();
 if(typeof kv.sort==='string'){var desc=kv.sort.charAt(0)==='-';var key=desc?kv.sort.slice(1):kv.sort;
  var table=$('section.on table.board')||$('#leaderboard');var heads=table.tHead.rows[0].cells;
  for(var i=0;i<heads.length;i++){if(heads[i].getAttribute('data-key')===key||String(i)===key){sortTable(table,i,desc);break;}}}
 if(kv.selftest){var t=$('#leaderboard');var out={headers:[],rows:[],tab:state.tab,sorted:t.getAttribute('data-sorted')};
  $$('th',t).forEach(function(th){var r=th.getBoundingClientRect();if(r.width>0&&r.height>0){out.headers.push({key:th.getAttribute('data-key'),label:th.textContent,x:r.left,w:r.width});}});
  $$('tbody tr',t).forEach(function(tr){var r=tr.getBoundingClientRect();if(r.height>0){out.rows.push({model:tr.getAttribute('data-model'),y:r.top,h:r.height});}});
  var sec=$('section.on');out.visible_tables=$$('table',sec).filter(function(x){return x.getBoundingClientRect().height>0;}).length;
  $('#selftest-out').textContent=JSON.stringify(out);}}
window.addEventListener('hashchange',fromHash);fromHash();
})();
"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _fmt(x: Any, d: int = 3) -> str:
    return "n/a" if not isinstance(x, (int, float)) or x != x else f"{x:.{d}f}"


def _title(e: Any) -> str:
    parts = []
    if e.p is not None:
        parts.append(f"p vs best={_fmt(e.p, 4)}, Holm-adjusted={_fmt(e.p_adj, 4)}")
    if e.rank is not None:
        parts.append(f"rank {e.rank:g}" + (f" [{e.rank_low:g}, {e.rank_high:g}], P(rank 1)={e.p_rank1:.2f}"
                                           if e.rank_low is not None else ""))
    parts.append(f"seeds {e.seeds}; config {e.config_hash[:12]}; split {e.split_hash[:12]}; n={e.n}; B={e.n_boot}")
    if e.sources:
        parts.append("from " + "; ".join(e.sources))
    if e.note:
        parts.append(e.note)
    return "\n".join(parts)


def _board(cols: list[Any], order: list[str], meta: dict, ranks: dict | None, table_id: str, with_meta: bool) -> str:
    from dermbench.leaderboard import OVERLAP_MARK, cell_text

    heads = ['<th data-key="model">Model</th>']
    if with_meta:
        heads += ['<th data-key="params">Params</th>',
                  '<th data-key="licence" title="* = no commercial use">Licence</th>',
                  '<th data-key="overlap" title="declared training data includes the evaluated dataset">Overlap</th>',
                  '<th data-key="overall_rank" title="mean of per-column ranks [95% bootstrap interval], '
                  'P(overall rank 1)">Overall rank</th>']
    for c in cols:
        arrow = "↑" if c.higher_is_better else "↓"
        fam = f"Holm family: {c.family_size} tests; smallest attainable p={_fmt(c.min_p, 4)}" if c.family_size else ""
        heads.append(f'<th data-key="{_e(c.key)}" data-task="{_e(c.task)}" data-dataset="{_e(c.dataset)}" '
                     f'title="{_e((c.note + chr(10) + fam).strip())}">{_e(c.label)} {arrow}</th>')
    body = []
    for m in order:
        if not any(m in c.entries for c in cols):
            continue
        md = meta.get(m, {})
        tds = [f'<td data-v="{_e(m)}">{_e(m)}</td>']
        if with_meta:
            r = (ranks or {}).get(m, {})
            rt = "n/a" if r.get("mean_rank") is None else f"{r['mean_rank']:.2f}" + (
                f" [{r['rank_low']:.2f}, {r['rank_high']:.2f}]" if r.get("rank_low") is not None else "") + (
                f" P(1)={r['p_rank1']:.2f}" if r.get("p_rank1") is not None else "")
            p = md.get("params")
            tds += [f'<td data-v="{p if isinstance(p, (int, float)) else ""}">'
                    f'{_e(f"{p / 1e6:.0f}M" if isinstance(p, (int, float)) and p > 0 else "?")}</td>',
                    f'<td data-v="{_e(md.get("license", "?"))}">{_e(md.get("license", "?") + ("" if md.get("commercial_use") else "*"))}</td>',
                    f'<td data-v="{len(md.get("overlap", []))}">{_e((OVERLAP_MARK + " " + ", ".join(md["overlap"])) if md.get("overlap") else "")}</td>',
                    f'<td data-v="{"" if r.get("mean_rank") is None else r["mean_rank"]}">{_e(rt)}</td>']
        for c in cols:
            e = c.entries.get(m)
            attrs = f'data-task="{_e(c.task)}" data-dataset="{_e(c.dataset)}"'
            if e is None:
                tds.append(f'<td data-v="" class="na" {attrs}>–</td>')
                continue
            cls = " ".join(k for k, on in (("best", e.best), ("ns", e.ns)) if on)
            v = "" if e.value is None else repr(float(e.value))
            tds.append(f'<td data-v="{v}" class="{cls}" {attrs} title="{_e(_title(e))}">'
                       f'{_e(cell_text(e, markdown=False))}</td>')
        body.append(f'<tr data-model="{_e(m)}" data-commercial="{1 if md.get("commercial_use") else 0}">'
                    + "".join(tds) + "</tr>")
    return (f'<div style="overflow-x:auto"><table class="board" id="{_e(table_id)}"><thead><tr>{"".join(heads)}'
            f'</tr></thead>\n<tbody>\n' + "\n".join(body) + "\n</tbody></table></div>")


def _fairness(rows: list[dict[str, Any]], meta: dict) -> str:
    if not rows:
        return "<p>No fairness records.</p>"
    head = ("<tr><th data-key='model'>Model</th><th data-key='dataset'>Dataset</th><th data-key='attribute'>Attribute</th>"
            "<th data-key='metric'>Metric</th><th data-key='groups'>Per group [95% CI] (n)</th>"
            "<th data-key='gap'>Gap [projection 95% CI]</th><th data-key='p'>p (no gap)</th>"
            "<th data-key='worst'>Worst group</th><th data-key='eod'>Equalized odds [95% CI]</th></tr>")
    body = []
    for r in rows:
        groups = "<br>".join(f"{_e(g)}: {_fmt(d.get('value'))} [{_fmt(d.get('ci_low'))}, {_fmt(d.get('ci_high'))}] "
                             f"(n={_e(d.get('n'))})" for g, d in r["groups"].items())
        eod = "" if r["eod"] is None else f"{_fmt(r['eod'])} [{_fmt(r['eod_ci'][0])}, {_fmt(r['eod_ci'][1])}]"
        com = 1 if meta.get(r["model"], {}).get("commercial_use") else 0
        body.append(
            f'<tr data-model="{_e(r["model"])}" data-commercial="{com}" data-task="fairness" data-dataset="{_e(r["dataset"])}">'
            f'<td data-v="{_e(r["model"])}">{_e(r["model"])}</td><td data-v="{_e(r["dataset"])}">{_e(labels.dataset(r["dataset"]))}</td>'
            f'<td data-v="{_e(r["attribute"])}">{_e(r["attribute"])}</td><td data-v="{_e(r["metric"])}">{_e(labels.metric(r["metric"]))}</td>'
            f'<td>{groups}</td><td data-v="{r["gap"] if r["gap"] is not None else ""}" title="{_e(r["gap_ci_method"])}">'
            f'{_fmt(r["gap"])} [{_fmt(r["gap_ci"][0])}, {_fmt(r["gap_ci"][1])}]</td>'
            f'<td data-v="{r["p_value"] if r["p_value"] is not None else ""}">{_fmt(r["p_value"])}</td>'
            f'<td>{_e(r["worst_group"] or "")}: {_fmt(r["worst"])}</td><td>{eod}</td></tr>')
    return ('<table class="board" id="fairness"><thead>' + head + "</thead><tbody>" + "\n".join(body) +
            "</tbody></table><p class='notes'>Gaps are never ranked or marked best (a small gap can come from a "
            "uniformly poor model). Gap/worst/EOD intervals: projection of simultaneous max-t intervals over "
            "pairwise group differences (valid at a true gap of 0); p: permutation test of the group labels.</p>")


def _references(rows: list[dict[str, Any]], doc: dict | None) -> str:
    if not rows:
        return (f"<p>Reference table version {_e((doc or {}).get('version'))}: no published numbers for these "
                "models and datasets (dermbench/report/references.json, or pass --references FILE).</p>")
    head = "".join(f"<th data-key='{k}'>{k}</th>" for k in ("model", "task", "dataset", "split (source)", "n", "metric",
                                                            "published", "measured [95% CI]", "verdict", "source"))
    body = []
    for r in rows:
        mea = "–" if r["measured"] is None else f"{_fmt(r['measured'])} [{_fmt(r['measured_ci'][0])}, {_fmt(r['measured_ci'][1])}]"
        body.append(f'<tr data-task="{_e(r["task"])}" data-dataset="{_e(r["dataset"])}"><td>{_e(r["model"])}</td><td>{_e(r["task"])}</td>'
                    f'<td>{_e(labels.dataset(r["dataset"]))}</td><td>{_e(r["split"])}</td><td>{_e(r["n"])}</td>'
                    f'<td>{_e(labels.metric(r["metric"]))}</td><td>{_fmt(r["value"])}</td><td>{mea}</td>'
                    f'<td title="{_e(r["why"])}">{_e(r["verdict"])}</td><td>{_e(r["source"])}</td></tr>')
    return f'<table class="board" id="references"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _problems(left_out: list[dict[str, str]], problems: list[dict[str, str]]) -> str:
    out = []
    if problems:
        out.append(f'<p class="warn">{len(problems)} unreadable or malformed record(s), not on the board:</p><ul>')
        out += [f"<li><code>{_e(p['path'])}</code>: {_e(p['reason'])} → {_e(p['fix'])}</li>" for p in problems]
        out.append("</ul>")
    if left_out:
        out.append(f"<p>{len(left_out)} record(s) left out:</p><ul>")
        out += [f"<li>{_e(x['record'])} ({_e(x['source'])}): {_e(x['reason'])}</li>" for x in left_out]
        out.append("</ul>")
    return "".join(out) or "<p>Nothing left out; every record was readable.</p>"


def render(boards: dict[str, Any], settings: dict[str, Any], images: Sequence[Path] = ()) -> str:
    order, meta, ranks = boards["order"], boards["meta"], boards["ranks"]
    all_cols = boards["main"] + boards["detail"] + boards["calibration"]
    tasks = sorted({c.task for c in all_cols} | {r["task"] for r in boards["fairness"]})
    datasets = sorted({c.dataset for c in all_cols} | {r["dataset"] for r in boards["fairness"]})
    opt = lambda vals, lab: "".join(f'<option value="{_e(v)}">{_e(lab(v))}</option>' for v in vals)  # noqa: E731
    filters = (f'<label>Task <select id="f-task"><option value="">all</option>{opt(tasks, labels.task)}</select></label>'
               f'<label>Dataset <select id="f-dataset"><option value="">all</option>{opt(datasets, labels.dataset)}</select></label>'
               '<label>Licence <select id="f-licence"><option value="">all</option><option value="commercial">'
               'commercial use</option><option value="noncommercial">non-commercial</option></select></label>')
    n_bad = len(boards["problems"]) + len(boards["left_out"])
    tabs = [("main", "Main"), ("detail", "Detail"), ("calibration", "Calibration"), ("fairness", "Fairness"),
            ("references", "References"), ("left-out", f"Left out ({n_bad})")]
    detail = []
    for task in sorted({c.task for c in boards["detail"]}):
        cols = [c for c in boards["detail"] if c.task == task]
        detail.append(f'<h3 data-task="{_e(task)}" data-dataset="">{_e(labels.task(task))}</h3>'
                      + _board(cols, order, meta, None, f"detail-{task}", False))
    imgs = "".join(f'<figure><img alt="{_e(p.stem)}" src="data:image/png;base64,'
                   f'{base64.b64encode(Path(p).read_bytes()).decode()}"></figure>' for p in images)
    warn = (f'<p class="warn">{len(boards["problems"])} unreadable record(s): see "Left out".</p>'
            if boards["problems"] else "")
    sections = {
        "main": warn + _board(boards["main"], order, meta, ranks, "leaderboard", True) + imgs,
        "detail": "".join(detail) or "<p>No detail metrics.</p>",
        "calibration": _board(boards["calibration"], order, meta, None, "calibration", False)
        if boards["calibration"] else "<p>No classification records with probabilities.</p>",
        "fairness": _fairness(boards["fairness"], meta),
        "references": _references(boards["references"], boards["reference_doc"]),
        "left-out": _problems(boards["left_out"], boards["problems"]),
    }
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dermbench leaderboard</title>"
        f"<style>{_CSS}</style></head><body>\n<h1>dermbench leaderboard</h1>\n"
        f'<div class="bar">{filters}</div>\n<div class="tabs">'
        + "".join(f'<button data-tab="{k}" class="{"on" if k == "main" else ""}">{_e(v)}</button>' for k, v in tabs)
        + "</div>\n"
        + "".join(f'<section data-tab="{k}" class="{"on" if k == "main" else ""}">{v}</section>\n' for k, v in sections.items())
        + '<ul class="notes">' + "".join(f"<li>{_e(n.replace('**', ''))}</li>" for n in boards["notes"]) + "</ul>\n"
        + f'<p class="notes">settings: {_e(json.dumps(settings))}</p>\n<pre id="selftest-out"></pre>\n'
        + f"<script>{_JS}</script>\n</body></html>\n"
    )
