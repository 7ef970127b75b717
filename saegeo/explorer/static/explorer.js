// saegeo's family explorer: one ES module, no build step, shared by the offline site
// (saegeo explore) and the Jupyter widget (sg.explore). Data documents are described in
// saegeo/explorer/site_data.py; a loader turns a name ("member-1", "snippets-1") into a promise
// of its document. Stable hooks for tests: [data-testid=search], [data-feature="L/I"],
// [data-testid=feature-card], [data-testid=parents], [data-testid=children],
// [data-testid=snippet].

const ROW_HEIGHT = 26;
const MAX_TREE_CHILDREN = 8;
const SORTS = {
  index: ["feature", (m, j) => j, 1],
  freq: ["frequency", (m, j) => m.freq[j], -1],
  delta_mse: ["delta_mse", (m, j) => m.delta_mse[j], 1],
  explained: ["explained", (m, j) => m.explained[j], 1],
  residual: ["residual (novel first)", (m, j) => m.residual[j], -1],
  n_children: ["children", (m, j) => m.n_children[j], -1],
  kind: ["kind (novel first)", (m, j) => m.kind[j], -1],
};

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

export function fmt(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (Number.isInteger(v)) return String(v);
  return Number(v.toPrecision(digits)).toString();
}

function parseId(text) {
  const m = /^\s*(\d+)\s*\/\s*(\d+)\s*$/.exec(text);
  return m ? [Number(m[1]), Number(m[2])] : null;
}

// Viridis, sampled: one colour scale per score, from the threshold to 1.
const VIRIDIS = ["#440154", "#414487", "#2a788e", "#22a884", "#7ad151", "#fde725"];
export function scoreColour(score, threshold) {
  const t = Math.max(0, Math.min(1, (score - threshold) / Math.max(1e-9, 1 - threshold)));
  const x = t * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i].match(/\w\w/g).map((c) => parseInt(c, 16));
  const b = VIRIDIS[i + 1].match(/\w\w/g).map((c) => parseInt(c, 16));
  return `rgb(${a.map((v, k) => Math.round(v + f * (b[k] - v))).join(",")})`;
}

export class Explorer {
  constructor(root, index, load) {
    this.root = root;
    this.index = index;
    this.load = load;
    this.cache = new Map();
    this.level = 0;
    this.sort = "n_children";
    this.query = "";
    this.selected = null;
    this.rows = [];
    this.build();
  }

  async data(name) {
    if (!this.cache.has(name)) this.cache.set(name, this.load(name));
    return this.cache.get(name);
  }

  // A member's table and edges (labels, parents, children): all a tree or a link needs.
  async table(level) {
    return this.data(`member-${level}`);
  }

  // A member's table with its histograms and snippets: what its list and cards need.
  async member(level) {
    const [m, sn] = await Promise.all([this.data(`member-${level}`), this.data(`snippets-${level}`)]);
    return { m, sn };
  }

  build() {
    const ix = this.index;
    this.search = h("input", {
      "data-testid": "search",
      type: "search",
      placeholder: "feature 1/23, text, or /regex/",
      oninput: () => {
        this.query = this.search.value;
        this.refresh();
      },
      onkeydown: (e) => {
        const id = parseId(this.search.value);
        if (e.key === "Enter" && id) this.open(id[0], id[1]);
      },
    });
    this.levelSelect = h(
      "select",
      { "data-testid": "level", onchange: () => this.showLevel(Number(this.levelSelect.value)) },
      ix.levels.map((lv) => h("option", { value: lv.level }, `${lv.level}: ${lv.source} (${lv.width})`)),
    );
    this.sortSelect = h(
      "select",
      { "data-testid": "sort", onchange: () => { this.sort = this.sortSelect.value; this.refresh(); } },
      Object.entries(SORTS).map(([k, [label]]) => h("option", { value: k, selected: k === this.sort }, label)),
    );
    this.count = h("span", { class: "sg-count" });
    this.spacer = h("div", { class: "sg-spacer" });
    this.list = h("div", { class: "sg-list", "data-testid": "feature-list", onscroll: () => this.paint() }, this.spacer);
    this.card = h("div", { class: "sg-cardpane" }, h("p", { class: "sg-hint" }, "Pick a feature."));
    const info = `${ix.metric} > ${ix.threshold} · novel iff max cos ≤ ${ix.novelty_threshold}` +
      (ix.n_tokens ? ` · ${ix.n_tokens.toLocaleString("en")} tokens` : "");
    this.root.replaceChildren(
      h("div", { class: "sg-explorer" },
        h("header", {}, h("strong", {}, "saegeo explorer"), this.levelSelect, this.search, this.sortSelect, this.count,
          h("small", { class: "sg-info" }, info)),
        h("main", {}, h("div", { class: "sg-listbox" }, this.head(), this.list), this.card)),
    );
    // Open on the root that splits most clearly (explorer.json's "start"), else level 0's top row.
    const start = ix.start ? parseId(ix.start) : null;
    this.showLevel(start ? start[0] : 0, start);
  }

  head() {
    return h("div", { class: "sg-row sg-head" }, ...["feature", "label", "kind", "freq", "delta_mse", "children"]
      .map((t, i) => h("span", { class: i > 2 ? "sg-num" : "" }, t)));
  }

  async showLevel(level, start = null) {
    this.level = level;
    this.levelSelect.value = String(level);
    this.current = await this.member(level);
    this.refresh();
    if (!this.selected && start) await this.open(start[0], start[1]);
    else if (!this.selected && this.rows.length) await this.open(level, this.rows[0]);
  }

  matcher() {
    const q = this.query.trim();
    if (!q || parseId(q)) return null;
    const re = /^\/(.+)\/([a-z]*)$/.exec(q);
    if (re) {
      try {
        const rx = new RegExp(re[1], re[2].includes("i") ? re[2] : re[2]);
        return (text) => rx.test(text);
      } catch {
        return () => false;
      }
    }
    const needle = q.toLowerCase();
    return (text) => text.toLowerCase().includes(needle);
  }

  snippetText(sn, j) {
    return sn.snippets[j].map((r) => r[2].map((t) => sn.tokens[t] ?? "").join("")).join("\n");
  }

  refresh() {
    if (!this.current) return;
    const { m, sn } = this.current;
    const width = m.freq.length;
    let rows = [...Array(width).keys()];
    const id = parseId(this.query);
    if (id && id[0] === this.level) rows = rows.filter((j) => j === id[1]);
    const match = this.matcher();
    if (match) rows = rows.filter((j) => match(m.label[j]) || match(this.snippetText(sn, j)));
    const [, key, dir] = SORTS[this.sort];
    rows.sort((a, b) => {
      const va = key(m, a), vb = key(m, b);
      if (va === vb) return a - b;
      if (va === null || va === undefined) return 1;
      if (vb === null || vb === undefined) return -1;
      return dir * (va < vb ? -1 : 1);
    });
    this.rows = rows;
    this.count.textContent = `${rows.length.toLocaleString("en")} of ${width.toLocaleString("en")}`;
    this.spacer.style.height = `${rows.length * ROW_HEIGHT}px`;
    this.list.scrollTop = 0;
    this.paint();
  }

  // Virtualised: only the rows in view (and a margin) exist in the page.
  paint() {
    if (!this.current) return;
    const { m } = this.current;
    const first = Math.max(0, Math.floor(this.list.scrollTop / ROW_HEIGHT) - 10);
    const last = Math.min(this.rows.length, first + Math.ceil(this.list.clientHeight / ROW_HEIGHT) + 20);
    const rows = [];
    for (let r = first; r < last; r++) {
      const j = this.rows[r];
      const id = `${this.level}/${j}`;
      const kind = m.kind[j] === null ? "" : m.kind[j] ? "novel" : "recon";
      rows.push(
        h("div", {
          class: `sg-row${this.selected === id ? " sg-sel" : ""}`,
          "data-feature": id,
          style: `top:${r * ROW_HEIGHT}px`,
          onclick: () => this.open(this.level, j),
        },
        h("span", { class: "sg-id" }, id),
        h("span", { class: "sg-lab" }, m.label[j]),
        h("span", { class: `sg-kind sg-${kind}` }, kind),
        h("span", { class: "sg-num", title: "frequency" }, fmt(m.freq[j], 2)),
        h("span", { class: "sg-num", title: "delta_mse" }, fmt(m.delta_mse[j], 3)),
        h("span", { class: "sg-num", title: "children" }, m.n_children[j])),
      );
    }
    this.spacer.replaceChildren(...rows);
  }

  async open(level, j) {
    if (level < 0 || level >= this.index.levels.length || j < 0 || j >= this.index.levels[level].width) return;
    if (level !== this.level) await this.showLevel(level);
    this.selected = `${level}/${j}`;
    this.paint();
    const { m, sn } = await this.member(level);
    this.card.replaceChildren(await this.renderCard(level, j, m, sn));
  }

  link(level, j, score, label) {
    return h("a", {
      href: "#",
      class: "sg-link",
      "data-feature": `${level}/${j}`,
      "data-score": score,
      onclick: (e) => { e.preventDefault(); this.open(level, j); },
    }, `${level}/${j}`, h("small", {}, ` ${label ?? ""} (${fmt(score, 3)})`));
  }

  async renderCard(level, j, m, sn) {
    const ix = this.index;
    const lv = ix.levels[level];
    const parentsM = level > 0 ? await this.table(level - 1) : null;
    const childrenM = level + 1 < ix.levels.length ? await this.table(level + 1) : null;
    const num = (key, label, v, digits = 4) => [
      h("dt", {}, label),
      h("dd", { "data-key": key, "data-value": v ?? "" }, fmt(v, digits)),
    ];
    const kind = m.kind[j] === null ? null : m.kind[j] ? "novel" : "reconstruction";
    const np = lv.neuronpedia ? h("a", { href: `${lv.neuronpedia}${j}`, target: "_blank", rel: "noopener" }, "Neuronpedia ↗") : null;
    const swap = m.swap[j] >= 0 ? m.swaps[m.swap[j]] : null;
    return h("section", { class: "sg-card", "data-testid": "feature-card", "data-feature": `${level}/${j}` },
      h("h2", {}, `${level}/${j} `, h("span", { class: "sg-label" }, m.label[j]), " ", h("small", {}, `${lv.source}, width ${lv.width}`), " ", np),
      h("dl", {},
        h("dt", {}, "kind"), h("dd", { "data-key": "kind", "data-value": kind ?? "", class: kind ? `sg-${kind}` : "" }, kind ?? "–"),
        num("max_cos", "max cos", m.max_cos[j]),
        h("dt", {}, "nearest"), h("dd", { "data-key": "nearest" }, m.nearest[j] === null ? "–" : this.link(level - 1, m.nearest[j], m.max_cos[j], parentsM.label[m.nearest[j]])),
        num("delta_mse", "delta_mse", m.delta_mse[j]),
        num("explained", "explained", m.explained[j]),
        num("residual", "residual", m.residual[j]),
        num("freq", "frequency", m.freq[j]),
        num("max_act", "max act", m.max_act[j]),
        num("mean_act", "mean act", m.mean_act[j]),
        num("n_children", "children", m.n_children[j]),
        h("dt", {}, "swap group"), h("dd", { "data-key": "swap" }, swap ? `${swap[0].length} → ${swap[1].length} (max cos ${fmt(swap[2], 3)})` : "–")),
      this.histogram(sn, j),
      h("div", { class: "sg-edges" }, h("span", { class: "sg-title" }, `parents (${ix.metric} > ${ix.threshold})`),
        h("div", { "data-testid": "parents" }, m.parents[j].length ? m.parents[j].map(([p, sc]) => this.link(level - 1, p, sc, parentsM.label[p])) : h("i", {}, "none"))),
      h("div", { class: "sg-edges" }, h("span", { class: "sg-title" }, "children"),
        h("div", { "data-testid": "children" }, m.children[j].length ? m.children[j].map(([c, sc]) => this.link(level + 1, c, sc, childrenM.label[c])) : h("i", {}, "none"))),
      h("div", { class: "sg-tree" }, h("span", { class: "sg-title" }, "tree"), await this.tree(level, j)),
      h("div", { class: "sg-snips" }, h("span", { class: "sg-title" }, "top activations"), this.snippets(sn, j)),
    );
  }

  histogram(sn, j) {
    const hist = sn.hist[j];
    if (!hist || hist.length < 2) return h("p", { class: "sg-hint" }, "never fires on these tokens");
    const [lo, ...counts] = hist;
    const W = 320, H = 60, top = Math.max(...counts), bar = W / counts.length;
    const svg = s("svg", { width: W, height: H + 14, role: "img", "aria-label": "activation histogram" });
    counts.forEach((c, i) => {
      const hgt = (H * c) / top;
      const r = s("rect", { x: i * bar, y: H - hgt, width: Math.max(1, bar - 1), height: hgt, fill: "#e66101" });
      r.append(s("title", {}, `${fmt(sn.hist_edges[lo + i], 3)}–${fmt(sn.hist_edges[lo + i + 1], 3)}: ${c}`));
      svg.append(r);
    });
    svg.append(s("text", { x: 0, y: H + 12, "font-size": 10 }, fmt(sn.hist_edges[lo], 3)));
    svg.append(s("text", { x: W, y: H + 12, "font-size": 10, "text-anchor": "end" }, fmt(sn.hist_edges[lo + counts.length], 3)));
    return h("div", { class: "sg-hist" }, h("span", { class: "sg-title" }, "activations (log bins)"), svg);
  }

  snippets(sn, j) {
    const rows = sn.snippets[j];
    if (!rows.length) return h("p", { class: "sg-hint" }, this.index.has_text ? "never fires" : "no token ids in these activations");
    const peak = Math.max(...rows.map((r) => Math.max(...r[3])));
    return rows.map(([act, centre, ids, acts]) =>
      h("div", { class: "sg-snip", "data-testid": "snippet", "data-value": act },
        h("span", { class: "sg-act" }, fmt(act, 3)),
        ids.map((t, i) => h(i === centre ? "b" : "span", {
          style: `background:rgba(230,97,1,${Math.max(0, acts[i] / peak).toFixed(2)})`,
          title: fmt(acts[i], 4),
        }, (sn.tokens[t] ?? "").replace(/\n/g, "⏎")))));
  }

  // The feature with its ancestors to the left and its descendants to the right (best first,
  // at most MAX_TREE_CHILDREN per node), edges coloured on one scale from the threshold to 1.
  async tree(level, j) {
    const ix = this.index;
    const nodes = new Map();
    const edges = [];
    const add = (lv, f, label) => { const id = `${lv}/${f}`; if (!nodes.has(id)) nodes.set(id, { lv, f, label }); return id; };
    add(level, j, (await this.table(level)).label[j]);
    // Ancestors down to the narrowest member (the best MAX_TREE_CHILDREN parents of each).
    let below = [j];
    for (let lv = level; lv > 0 && below.length; lv--) {
      const here = await this.table(lv);
      const up = await this.table(lv - 1);
      const above = [];
      for (const f of below) {
        for (const [p, sc] of here.parents[f].slice(0, MAX_TREE_CHILDREN)) {
          if (!nodes.has(`${lv - 1}/${p}`)) above.push(p);
          edges.push([add(lv - 1, p, up.label[p]), `${lv}/${f}`, sc]);
        }
      }
      below = above.slice(0, 40);
    }
    let frontier = [j];
    let more = 0;
    for (let lv = level; lv + 1 < ix.levels.length && frontier.length; lv++) {
      const here = await this.table(lv);
      const next = await this.table(lv + 1);
      const nextFrontier = [];
      for (const f of frontier) {
        const kids = here.children[f];
        more += Math.max(0, kids.length - MAX_TREE_CHILDREN);
        for (const [c, sc] of kids.slice(0, MAX_TREE_CHILDREN)) {
          const seen = nodes.has(`${lv + 1}/${c}`);
          edges.push([`${lv}/${f}`, add(lv + 1, c, next.label[c]), sc]);
          if (!seen) nextFrontier.push(c);
        }
      }
      frontier = nextFrontier.slice(0, 40);
    }
    const columns = new Map();
    for (const [id, n] of nodes) {
      if (!columns.has(n.lv)) columns.set(n.lv, []);
      columns.get(n.lv).push(id);
    }
    const levels = [...columns.keys()].sort((a, b) => a - b);
    const colW = 190, rowH = 24, pad = 6;
    const height = Math.max(...[...columns.values()].map((c) => c.length)) * rowH + pad * 2;
    const svg = s("svg", { width: levels.length * colW + 10, height, class: "sg-treesvg" });
    const pos = new Map();
    levels.forEach((lv, x) => columns.get(lv).forEach((id, y) => pos.set(id, [x * colW + 4, pad + y * rowH + rowH / 2])));
    for (const [a, b, sc] of edges) {
      const [x1, y1] = pos.get(a), [x2, y2] = pos.get(b);
      const path = s("path", {
        d: `M${x1 + colW - 40},${y1} C${x1 + colW - 10},${y1} ${x2 - 20},${y2} ${x2},${y2}`,
        stroke: scoreColour(sc, ix.threshold), "stroke-width": 2, fill: "none",
      });
      path.append(s("title", {}, `${a} → ${b}: ${fmt(sc, 3)}`));
      svg.append(path);
    }
    for (const [id, n] of nodes) {
      const [x, y] = pos.get(id);
      const text = `${id} ${n.label}`;
      const g = s("g", { "data-feature": id, class: `sg-node${id === `${level}/${j}` ? " sg-me" : ""}`, style: "cursor:pointer" });
      g.append(s("text", { x, y: y + 4, "font-size": 11 }, text.length > 23 ? `${text.slice(0, 22)}…` : text));
      g.addEventListener("click", () => this.open(n.lv, n.f));
      svg.append(g);
    }
    const legend = h("div", { class: "sg-legend" }, `${ix.metric}: `,
      h("span", { style: `background:linear-gradient(to right, ${VIRIDIS.join(",")})` }),
      ` ${fmt(ix.threshold, 3)} – 1`, more ? ` · ${more} weaker children not drawn` : "");
    return h("div", {}, legend, h("div", { class: "sg-treebox" }, svg));
  }
}

export function mount(el, index, load) {
  return new Explorer(el, index, load);
}

// The offline site: data documents arrive as scripts that call window.saegeoData(name, doc),
// which works from file:// as from a web server.
export function scriptLoader(base) {
  const waiting = new Map();
  window.saegeoData = (name, doc) => {
    const w = waiting.get(name);
    if (w) { waiting.delete(name); w.resolve(doc); }
  };
  return (name) => new Promise((resolve, reject) => {
    waiting.set(name, { resolve, reject });
    const tag = document.createElement("script");
    tag.src = `${base}/${name}.js`;
    tag.onerror = () => reject(new Error(`cannot load ${tag.src}`));
    document.head.append(tag);
  });
}

// The Jupyter widget (anywidget): documents come as messages from the kernel on request.
function render({ model, el }) {
  const waiting = new Map();
  model.on("msg:custom", (msg) => {
    if (msg && msg.type === "data" && waiting.has(msg.name)) {
      waiting.get(msg.name)(msg.doc);
      waiting.delete(msg.name);
    }
  });
  const load = (name) => new Promise((resolve) => {
    waiting.set(name, resolve);
    model.send({ type: "load", name });
  });
  el.classList.add("sg-widget");
  mount(el, model.get("index"), load);
}

export default { render };
