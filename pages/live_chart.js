// The Train page's live view (pages/live.py): polls the job's JSON feed once a second and updates
// the progress bar and the Plotly charts in place. Nothing re-runs the Streamlit script meanwhile,
// which is what made watching slow training down on a small machine (docs/performance.md).
// It asks Streamlit for one rerun when the job's phase changes (its run got an id, it ended).

const FALLBACK_AFTER = 5; // failed polls in a row before the page falls back to re-running itself
// Share of the wall clock the charts may take. A Plotly redraw costs 15-25 ms of a core, and far
// more wall time beside training; on a 2-core machine training loses about twice what the
// browser takes, so a slow or busy machine redraws less often (a fast one every redraw_ms, a
// busy one every MAX_REDRAW_MS) while the progress line still moves every second.
const DRAW_BUDGET = 0.02;
const MAX_REDRAW_MS = 5000;
const PLOT_CONFIG = { staticPlot: true, responsive: true };
const running = new WeakMap(); // parentElement -> its poller: a re-render must not start another
const PRELOAD_DELAY_MS = 500; // let the page settle first

// One Plotly for the page, kept on window: Streamlit swaps pages without reloading, so a copy
// loaded while the Train page waits for Start is there when the first curve arrives (parsing
// its 4.8 MB took ~1.7 s of CPU on a 2-core machine: not something to do beside training).
function loadPlotly(url) {
  if (window.Plotly) return Promise.resolve(window.Plotly);
  if (!window.cnnlabPlotlyLoading) {
    window.cnnlabPlotlyLoading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = url;
      script.onload = () => resolve(window.Plotly);
      script.onerror = () => {
        window.cnnlabPlotlyLoading = null; // the next chart tries again
        reject(new Error(`could not load ${url}`));
      };
      document.head.appendChild(script);
    });
  }
  return window.cnnlabPlotlyLoading;
}

function startPoller(root, data, setTriggerValue) {
  const q = (name) => root.querySelector(`[data-part="${name}"]`);
  const parts = {
    caption: q("caption"),
    queued: q("queued"),
    fill: q("fill"),
    text: q("text"),
    error: q("error"),
    charts: { loss: q("loss"), acc: q("acc") },
  };
  // the figure revisions drawn here: the feed sends a figure only when its revision moved on
  const state = { job: data.job, phase: data.phase, revs: {}, failures: 0, timer: null };
  state.drawAfter = 0; // performance.now() before which no figures are asked for
  let stopped = false;

  async function draw(name, figure, emptyText) {
    const div = parts.charts[name];
    if (!figure) {
      if (div.dataset.drawn) {
        (await loadPlotly(data.plotly_url)).purge(div);
        delete div.dataset.drawn;
      }
      div.textContent = emptyText;
      return;
    }
    const Plotly = await loadPlotly(data.plotly_url);
    if (stopped) return;
    if (!div.dataset.drawn) div.textContent = "";
    await Plotly.react(div, figure.data, figure.layout, PLOT_CONFIG);
    div.dataset.drawn = "1";
  }

  async function drawAll(feed) {
    const started = performance.now();
    const draws = Object.entries(feed.figures).map(([name, figure]) => {
      state.revs[name] = feed.revs[name];
      return draw(name, figure, feed.empty[name]);
    });
    if (!draws.length) return;
    try {
      await Promise.all(draws);
    } catch (err) {
      parts.error.textContent = `The chart could not be drawn: ${err.message}`;
    }
    const spent = performance.now() - started;
    const wait = Math.min(MAX_REDRAW_MS, Math.max(data.redraw_ms, spent / DRAW_BUDGET));
    state.drawAfter = performance.now() + wait;
  }

  function render(feed) {
    parts.caption.textContent = feed.caption || "";
    parts.queued.textContent = feed.queued || "";
    parts.queued.hidden = !feed.queued;
    parts.fill.style.width = `${(100 * feed.progress.fraction).toFixed(2)}%`;
    parts.text.textContent = feed.progress.text;
    return drawAll(feed);
  }

  async function tick() {
    state.timer = null;
    if (stopped) return;
    if (!document.hidden) {
      try {
        const query = new URLSearchParams(state.revs);
        if (performance.now() < state.drawAfter) query.set("figures", "0");
        const response = await fetch(`${data.url}${data.url.includes("?") ? "&" : "?"}${query}`, { cache: "no-store" });
        if (response.status === 404) {
          setTriggerValue("phase", "gone"); // the job was released: the page says what is left
          return;
        }
        if (!response.ok) throw new Error(`HTTP ${response.status} from ${data.url}`);
        const feed = await response.json();
        if (stopped) return;
        state.failures = 0;
        parts.error.textContent = "";
        await render(feed);
        if (feed.phase !== state.phase) {
          state.phase = feed.phase;
          setTriggerValue("phase", feed.phase);
        }
        if (!feed.active) return; // the page's rerun shows the result
      } catch (err) {
        state.failures += 1;
        parts.error.textContent = `The live view cannot reach the server (${err.message}); retrying…`;
        if (state.failures === FALLBACK_AFTER) setTriggerValue("lost", String(err.message));
      }
    }
    if (!stopped) state.timer = setTimeout(tick, data.interval_ms);
  }

  tick();
  state.stop = () => {
    stopped = true;
    if (state.timer) clearTimeout(state.timer);
  };
  return state;
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = parentElement.querySelector(".cnnlab-live");
  if (!data.job) {
    // no job yet: only get Plotly ready for the run the user is about to start
    root.hidden = true;
    const timer = setTimeout(() => loadPlotly(data.plotly_url).catch(() => {}), PRELOAD_DELAY_MS);
    return () => clearTimeout(timer);
  }
  root.hidden = false;
  const previous = running.get(parentElement);
  if (previous && previous.job === data.job) {
    return () => {
      previous.stop();
      running.delete(parentElement);
    };
  }
  if (previous) previous.stop();
  const poller = startPoller(root, data, setTriggerValue);
  running.set(parentElement, poller);
  return () => {
    poller.stop();
    running.delete(parentElement);
  };
}
