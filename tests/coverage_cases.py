"""The library classes tests/test_coverage_classes.py runs, modelled on
Kishu's coverage suite (kishu/coverage/coverage_test_cases.py: declare a
value, mutate it, compare), with two mutations per class: one written in a
cell, one made inside a notebook function the cell only calls.

Each case binds only names that start with its ``var`` (plus the function
``mut_<var>``), so many cases share one kernel without touching each other.
``outcome`` is what a rewind and a forward move must give: "exact" (the probe
shows the state of the step moved to) or "named" (the move's one line names
the variable as not tracked or not restored, and it is kept as it was).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    label: str      # the class, as Kishu's list names it where it has it
    module: str     # the distribution whose version the table shows
    var: str
    setup: str      # declares var (and whatever it needs); runs as one cell
    mutate: str     # a cell that changes var directly
    fmutate: str    # the body of mut_<var>(), which a later cell calls
    probe: str      # an expression whose repr is var's state
    outcome: str = "exact"


BAD = ("class Bad:\n    def __init__(self):\n        self.v = 0\n"
       "    def __setstate__(self, state):\n        raise ValueError('Bad cannot be unpickled')\n")
DF = ("import numpy as np, pandas as pd\n_r = np.random.default_rng(7)\n"
      "{v} = pd.DataFrame({{'g': list('abcd') * 10, 'v': _r.normal(size=40).round(3), "
      "'w': _r.integers(0, 9, 40)}})\n")
XY = ("import numpy as np\n_r = np.random.default_rng(1)\n{v}_X = _r.normal(size=(40, 3)).round(3)\n"
      "{v}_y = ({v}_X @ [1.0, -2.0, 0.5] > 0).astype(int)\n")


def df(v: str) -> str:
    return DF.format(v=v)


def xy(v: str) -> str:
    return XY.format(v=v)


CASES: list[Case] = [
    # -- the language and the standard library -----------------------------------
    Case("list", "python", "lst", "lst = [1, 2, 3]", "lst.append(4)", "lst[0] = 9", "lst"),
    Case("dict (nested)", "python", "dct", "dct = {'a': [1], 'b': {'c': 2}}",
         "dct['b']['c'] = 3", "dct['a'].append(5)", "dct"),
    Case("set", "python", "st", "st = {1, 2}", "st.add(3)", "st.discard(1)", "sorted(st)"),
    Case("bytearray", "python", "ba", "ba = bytearray(b'abc')", "ba[0] = 65", "ba.extend(b'!')",
         "bytes(ba)"),
    Case("collections.deque", "python", "dq", "import collections\ndq = collections.deque([1, 2], maxlen=3)",
         "dq.append(3)", "dq.appendleft(0)", "list(dq)"),
    Case("collections.Counter", "python", "ctr", "import collections\nctr = collections.Counter('abca')",
         "ctr.update('zz')", "ctr['a'] -= 1", "sorted(ctr.items())"),
    Case("dataclasses", "python", "dc",
         "from dataclasses import dataclass\n@dataclass\nclass DcPoint:\n    x: int\n    y: list\n"
         "dc = DcPoint(1, [2])", "dc.x = 5", "dc.y.append(3)", "(dc.x, dc.y)"),
    Case("__slots__ class", "python", "slo",
         "class Slotted:\n    __slots__ = ('a', 'b')\n    def __init__(self):\n        self.a, self.b = 1, [2]\n"
         "slo = Slotted()", "slo.a = 7", "slo.b.append(8)", "(slo.a, slo.b)"),
    Case("types.SimpleNamespace", "python", "sns_", "import types\nsns_ = types.SimpleNamespace(a=1)",
         "sns_.a = 2", "sns_.b = 3", "sorted(vars(sns_).items())"),
    Case("closure (notebook function)", "python", "cnt",
         "def make_counter():\n    n = 0\n    def step():\n        nonlocal n\n        n += 1\n"
         "        return n\n    return step\ncnt = make_counter()", "cnt()", "cnt()",
         "cnt.__closure__[0].cell_contents"),
    Case("class whose __setstate__ raises", "python", "bad", BAD + "bad = Bad()", "bad.v = 2",
         "bad.v = 3", "bad.v", "named"),
    Case("array.array", "python", "arr", "import array\narr = array.array('i', [1, 2])",
         "arr.append(3)", "arr[0] = -1", "arr.tolist()"),
    Case("io.StringIO", "python", "sio", "import io\nsio = io.StringIO()", "sio.write('ab')",
         "sio.write('cd')", "(sio.getvalue(), sio.tell())"),
    Case("list_iterator", "python", "lit", "lit = iter([1, 2, 3, 4])", "next(lit)", "next(lit)",
         "lit.__reduce__()[2]"),
    Case("itertools", "python", "itc", "import itertools\nitc = itertools.count(5)", "next(itc)",
         "next(itc)", "repr(itc)"),
    Case("random.Random", "python", "rnd", "import random\nrnd = random.Random(3)", "rnd.random()",
         "rnd.random()", "rnd.getstate()[1][-1]"),
    Case("re.Pattern", "python", "pat", "import re\npat = re.compile('a+')", "pat = re.compile('b+')",
         "global pat\n    pat = re.compile('c+', re.I)", "(pat.pattern, pat.flags)"),
    Case("datetime.timedelta", "python", "td", "import datetime\ntd = datetime.timedelta(days=1)",
         "td = td * 2", "global td\n    td = td + datetime.timedelta(seconds=5)", "td"),
    Case("uuid.UUID", "python", "uid", "import uuid\nuid = uuid.UUID(int=1)", "uid = uuid.UUID(int=2)",
         "global uid\n    uid = uuid.UUID(int=3)", "uid"),
    Case("pathlib.PosixPath", "python", "pth", "import pathlib\npth = pathlib.Path('/tmp/a')",
         "pth = pth / 'b'", "global pth\n    pth = pth.with_suffix('.txt')", "str(pth)"),
    Case("hashlib", "python", "hsh", "import hashlib\nhsh = hashlib.sha256()", "hsh.update(b'Nobody')",
         "hsh.update(b' inspects')", "hsh.hexdigest()", "named"),
    Case("hashlib (md5)", "python", "hmd", "import hashlib\nhmd = hashlib.md5(b'a')", "hmd.update(b'b')",
         "hmd.update(b'c')", "hmd.hexdigest()", "named"),
    Case("memoryview", "python", "mvw", "mvw = memoryview(bytearray(b'abc'))", "mvw[0] = 65",
         "mvw[1] = 66", "bytes(mvw)"),
    Case("threading.Semaphore", "python", "sem", "import threading\nsem = threading.Semaphore(3)",
         "sem.acquire()", "sem.acquire()", "sem._value", "named"),
    Case("threading.RLock", "python", "rlk", "import threading\nrlk = threading.RLock()",
         "rlk.acquire()", "rlk.acquire()", "repr(rlk).split(' at ')[0]", "named"),
    Case("threading.Event", "python", "evt", "import threading\nevt = threading.Event()", "evt.set()",
         "evt.clear()\n    evt.note = 'cleared'", "(evt.is_set(), getattr(evt, 'note', None))", "named"),
    Case("queue.Queue", "python", "que", "import queue\nque = queue.Queue()", "que.put(1)",
         "que.put(2)", "que.qsize()", "named"),
    Case("generator", "python", "gen", "gen = (i * i for i in range(9))", "next(gen)", "next(gen)",
         "gen.gi_frame.f_locals.get('i')", "named"),
    Case("open file", "python", "fil", "fil = open(DATA)", "fil.readline()", "fil.readline()",
         "fil.tell()", "named"),
    Case("sqlite3.Connection", "python", "sql3",
         "import sqlite3\nsql3 = sqlite3.connect(':memory:')\nsql3.execute('create table t (a)')",
         "sql3.execute('insert into t values (1)')", "sql3.execute('insert into t values (2)')",
         "sql3.execute('select count(*) from t').fetchone()", "named"),
    # -- numpy, pandas ---------------------------------------------------------------
    Case("numpy.ndarray", "numpy", "nda", "import numpy as np\nnda = np.arange(6)", "nda[3] = 10",
         "nda[:] *= 2", "nda.tolist()"),
    Case("numpy.random.Generator", "numpy", "rng", "import numpy as np\nrng = np.random.default_rng(0)",
         "rng.random()", "rng.random()", "rng.bit_generator.state['state']['state']"),
    Case("numpy.ma.MaskedArray", "numpy", "mka", "import numpy as np\nmka = np.ma.masked_array([1, 2, 3])",
         "mka[1] = np.ma.masked", "mka[0] = 7", "(mka.filled(-1).tolist(), np.ma.getmaskarray(mka).tolist())"),
    Case("pandas.DataFrame", "pandas", "pdf", df("pdf"), "pdf.at[0, 'g'] = 'Changed'",
         "pdf['x'] = pdf['v'] * 2", "pdf.to_json()"),
    Case("pandas.Series", "pandas", "ser", "import pandas as pd\nser = pd.Series([1, 2, 3, 4])",
         "ser[2] = 0", "ser.loc[9] = 5", "ser.to_dict()"),
    Case("pandas.Categorical", "pandas", "cat", "import pandas as pd\ncat = pd.Categorical(['a', 'b'])",
         "cat[0] = 'b'", "global cat\n    cat = cat.add_categories(['z'])",
         "(list(cat), list(cat.categories))"),
    Case("pandas MultiIndex DataFrame", "pandas", "mdf", df("mdf") + "mdf = mdf.set_index(['g', 'w'])",
         "mdf.iloc[0, 0] = 99.0", "mdf.sort_index(inplace=True)", "mdf.reset_index().to_json()"),
    # -- scipy -------------------------------------------------------------------------
    Case("scipy.sparse", "scipy", "spm", "import scipy.sparse as sp\nspm = sp.csr_matrix([[1, 0], [0, 2]])",
         "spm.data[0] = 5", "spm.data[1] = 7", "spm.toarray().tolist()"),
    Case("scipy.interpolate", "scipy", "spl",
         "from scipy.interpolate import CubicSpline\nspl = CubicSpline([0, 1, 2], [0, 1, 4])",
         "spl.c[0, 0] = 5.0", "spl.c[0, 1] = -5.0", "spl.c.round(9).tolist()"),
    Case("scipy.stats", "scipy", "kde",
         "import numpy as np\nfrom scipy import stats\nkde = stats.gaussian_kde(np.arange(10.0))",
         "kde.set_bandwidth(0.5)", "kde.set_bandwidth(0.25)", "kde.factor"),
    Case("scipy.spatial", "scipy", "hul",
         "from scipy.spatial import ConvexHull\n"
         "hul = ConvexHull([[0, 0], [1, 0], [0, 1], [0.2, 0.2]], incremental=True)",
         "hul.add_points([[2, 2]])", "hul.add_points([[-3, 0.5]])", "sorted(hul.vertices.tolist())", "named"),
    Case("scipy.optimize", "scipy", "opt",
         "from scipy.optimize import minimize\nopt = minimize(lambda x: (x[0] - 1) ** 2, [0.0])",
         "opt.x[0] = 5.0", "opt['note'] = 'moved'", "(round(float(opt.x[0]), 6), opt.get('note'))"),
    # -- scikit-learn ---------------------------------------------------------------
    Case("sklearn.linear_model", "scikit-learn", "lrm",
         xy("lrm") + "from sklearn.linear_model import LinearRegression\nlrm = LinearRegression().fit(lrm_X, lrm_y)",
         "lrm.fit(lrm_X[:20], lrm_y[:20])", "lrm.fit(lrm_X[:30] * 2, lrm_y[:30])",
         "lrm.coef_.round(6).tolist()"),
    Case("sklearn.preprocessing", "scikit-learn", "scl",
         xy("scl") + "from sklearn.preprocessing import StandardScaler\nscl = StandardScaler().fit(scl_X)",
         "scl.partial_fit(scl_X * 3)", "scl.partial_fit(scl_X + 1)", "scl.mean_.round(6).tolist()"),
    Case("sklearn.cluster", "scikit-learn", "kmn",
         xy("kmn") + "from sklearn.cluster import KMeans\nkmn = KMeans(2, n_init=1, random_state=0).fit(kmn_X)",
         "kmn.fit(kmn_X * 5)", "kmn.set_params(n_clusters=3)", "(kmn.n_clusters, round(kmn.inertia_, 6))"),
    Case("sklearn.ensemble", "scikit-learn", "rfc",
         xy("rfc") + "from sklearn.ensemble import RandomForestClassifier\n"
         "rfc = RandomForestClassifier(3, random_state=0).fit(rfc_X, rfc_y)",
         "rfc.set_params(n_estimators=5, warm_start=True).fit(rfc_X, rfc_y)",
         "rfc.set_params(n_estimators=6).fit(rfc_X, rfc_y)", "len(rfc.estimators_)"),
    Case("sklearn.tree", "scikit-learn", "dtr",
         xy("dtr") + "from sklearn.tree import DecisionTreeClassifier\n"
         "dtr = DecisionTreeClassifier(max_depth=1).fit(dtr_X, dtr_y)",
         "dtr.set_params(max_depth=3).fit(dtr_X, dtr_y)", "dtr.fit(dtr_X[:10], dtr_y[:10])",
         "(dtr.get_depth(), dtr.tree_.node_count)"),
    Case("sklearn.pipeline", "scikit-learn", "ppl",
         "from sklearn.pipeline import make_pipeline\nfrom sklearn.preprocessing import StandardScaler\n"
         "from sklearn.linear_model import LogisticRegression\n"
         "ppl = make_pipeline(StandardScaler(), LogisticRegression())",
         "ppl.set_params(logisticregression__C=0.5)", "ppl.steps[0][1].set_params(with_mean=False)",
         "(ppl[-1].C, ppl[0].with_mean)"),
    Case("sklearn.feature_extraction.text", "scikit-learn", "cvz",
         "from sklearn.feature_extraction.text import CountVectorizer\n"
         "cvz = CountVectorizer().fit(['a cat', 'a dog'])", "cvz.fit(['the bird'])",
         "cvz.fit(['one fish two fish'])", "sorted(cvz.vocabulary_.items())"),
    Case("sklearn.impute", "scikit-learn", "imp",
         "import numpy as np\nfrom sklearn.impute import SimpleImputer\n"
         "imp = SimpleImputer().fit([[1.0], [np.nan], [3.0]])", "imp.fit([[5.0], [7.0]])",
         "imp.set_params(strategy='median').fit([[1.0], [2.0], [9.0]])",
         "(imp.strategy, imp.statistics_.tolist())"),
    # -- plotting --------------------------------------------------------------------
    Case("matplotlib.Axes", "matplotlib", "axm",
         "import matplotlib.pyplot as plt\naxm_fig, axm = plt.subplots()\naxm.plot([1, 2, 3])",
         "axm.set_xlabel('Flipper Length')", "axm.set_title('moved')", "(axm.get_xlabel(), axm.get_title())"),
    Case("matplotlib.lines.Line2D", "matplotlib", "ln2",
         "import matplotlib.pyplot as plt\nln2_fig, ln2_ax = plt.subplots()\nln2, = ln2_ax.plot([1, 2])",
         "ln2.set_color('red')", "ln2.set_linewidth(4.0)", "(ln2.get_color(), ln2.get_linewidth())"),
    Case("matplotlib.colors.ListedColormap", "matplotlib", "lcm",
         "from matplotlib.colors import ListedColormap\nlcm = ListedColormap(['r', 'g', 'b'])",
         "lcm.set_bad('k')", "lcm.set_under('w')",
         "(lcm.get_bad().tolist(), lcm.get_under().tolist())"),
    Case("matplotlib.ticker.AutoLocator", "matplotlib", "alo",
         "from matplotlib.ticker import AutoLocator\nalo = AutoLocator()", "alo.set_params(nbins=3)",
         "alo.set_params(steps=[1, 5, 10])", "(alo._nbins, alo._steps.tolist())"),
    Case("seaborn (boxplot Axes)", "seaborn", "sbx",
         df("sbx_df") + "import seaborn as sns\nsbx = sns.boxplot(data=sbx_df, x='g', y='v')",
         "sbx.set_xlabel('group')", "sbx.set_title('boxes')", "(sbx.get_xlabel(), sbx.get_title())"),
    Case("seaborn FacetGrid", "seaborn", "sfg",
         df("sfg_df") + "import seaborn as sns\nsfg = sns.FacetGrid(sfg_df, col='g')",
         "sfg.set_axis_labels('a', 'b')", "sfg.set_titles('{col_name}!')",
         "(sfg.axes.flat[0].get_xlabel(), sfg.axes.flat[0].get_title())"),
    Case("plotly.graph_objects", "plotly", "pgo",
         "import plotly.graph_objects as go\npgo = go.Figure(data=[go.Bar(y=[1, 2])])",
         "pgo.update_layout(title_text='t')", "pgo.add_scatter(y=[3, 1])",
         "(pgo.layout.title.text, len(pgo.data))"),
    Case("plotly.express", "plotly", "pxs",
         "import plotly.express as px\npxs = px.scatter(x=[1, 2], y=[3, 4])",
         "pxs.update_traces(marker_size=20)", "pxs.update_xaxes(title_text='x!')",
         "(pxs.data[0].marker.size, pxs.layout.xaxis.title.text)"),
    Case("plotly.subplots", "plotly", "psb",
         "from plotly.subplots import make_subplots\npsb = make_subplots(rows=1, cols=2)",
         "psb.add_bar(y=[1], row=1, col=1)", "psb.add_bar(y=[2], row=1, col=2)", "len(psb.data)"),
    Case("bokeh.plotting figure", "bokeh", "bkf",
         "from bokeh.plotting import figure\nbkf = figure(width=400, height=400)", "bkf.height = 600",
         "bkf.line([1, 2], [3, 4])", "(bkf.height, len(bkf.renderers))", "named"),
    Case("bokeh ColumnDataSource", "bokeh", "cds",
         "from bokeh.models import ColumnDataSource\ncds = ColumnDataSource(data={'y': [1, 2]})",
         "cds.data['y'] = [3, 4]", "cds.data = {'y': [5], 'z': [6]}", "sorted(cds.data.items())", "named"),
    # -- graphs, frames, symbols, models, astronomy, widgets, images ------------------
    Case("networkx Graph", "networkx", "gph", "import networkx as nx\ngph = nx.Graph([(1, 2)])",
         "gph.add_edge(2, 3)", "gph.nodes[1]['colour'] = 'red'",
         "(sorted(gph.edges()), sorted(gph.nodes(data=True)))"),
    Case("networkx DiGraph", "networkx", "dgr", "import networkx as nx\ndgr = nx.DiGraph([(1, 2)])",
         "dgr.add_edge(2, 1, w=3)", "dgr.remove_edge(1, 2)", "sorted(dgr.edges(data=True))"),
    Case("polars.DataFrame", "polars", "pld", "import polars as pl\npld = pl.DataFrame({'a': [1, 2]})",
         "pld = pld.with_columns(b=pld['a'] * 2)", "pld[0, 'a'] = 10", "pld.to_dicts()"),
    Case("polars.LazyFrame", "polars", "plz", "import polars as pl\nplz = pl.LazyFrame({'a': [1, 2, 3]})",
         "plz = plz.filter(pl.col('a') > 1)", "global plz\n    plz = plz.with_columns(c=pl.col('a') + 1)",
         "plz.collect().to_dicts()"),
    Case("pyarrow.Table", "pyarrow", "atb",
         "import pyarrow as pa\natb = pa.table({'a': [1, 2]})", "atb = atb.append_column('b', pa.array([3, 4]))",
         "global atb\n    atb = atb.slice(1)", "atb.to_pydict()"),
    Case("pyarrow.Array", "pyarrow", "paa", "import pyarrow as pa\npaa = pa.array([1, None, 3])",
         "paa = paa.fill_null(0)", "global paa\n    paa = pa.concat_arrays([paa, pa.array([9])])",
         "paa.to_pylist()"),
    Case("sympy expression", "sympy", "sye", "import sympy\nsye_x = sympy.Symbol('x')\nsye = sye_x ** 2",
         "sye = sye + 1", "global sye\n    sye = sympy.expand((sye + sye_x) ** 2)", "str(sye)"),
    Case("sympy Matrix", "sympy", "smx", "import sympy\nsmx = sympy.Matrix([[1, 2], [3, 4]])",
         "smx[0, 0] = 5", "smx[1, 1] = sympy.Rational(1, 3)", "str(smx)"),
    Case("statsmodels.api", "statsmodels", "olm",
         xy("olm") + "import statsmodels.api as sm\nolm = sm.OLS(olm_y, sm.add_constant(olm_X)).fit()",
         "olm = sm.OLS(olm_y[:20], sm.add_constant(olm_X[:20])).fit()",
         "olm.params[0] = 99.0", "olm.params.round(6).tolist()"),
    Case("astropy.units.Quantity", "astropy", "qty",
         "import astropy.units as u\nqty = [1.0, 2.0, 3.0] * u.m", "qty[0] = 5 * u.m", "global qty\n    qty <<= u.cm",
         "(qty.value.tolist(), str(qty.unit))"),
    Case("astropy.table.QTable", "astropy", "qtb",
         "from astropy.table import QTable\nqtb = QTable({'a': [1, 2]})", "qtb['a'][0] = 9",
         "qtb['b'] = [3, 4]", "[list(r) for r in qtb.iterrows()]"),
    Case("astropy.wcs.WCS", "astropy", "wcs",
         "from astropy.wcs import WCS\nwcs = WCS(naxis=2)", "wcs.wcs.crval = [10.0, 20.0]",
         "wcs.wcs.cdelt = [0.5, 0.5]", "(wcs.wcs.crval.tolist(), wcs.wcs.cdelt.tolist())"),
    Case("astropy.wcs.Celprm", "astropy", "cel", "from astropy.wcs import Celprm\ncel = Celprm()",
         "cel.ref = [180.0, 90.0]", "cel.ref = [10.0, 45.0]", "cel.ref.tolist()[:2]", "named"),
    Case("astropy.modeling Polynomial1D", "astropy", "ply",
         "from astropy.modeling.models import Polynomial1D\nply = Polynomial1D(2)", "ply.c0 = 3.0",
         "ply.c2 = -1.0", "ply.parameters.tolist()"),
    Case("astropy.stats.SigmaClip", "astropy", "scp",
         "from astropy.stats import SigmaClip\nscp = SigmaClip(sigma=3)", "scp.sigma = 2",
         "scp.maxiters = 4", "(scp.sigma, scp.maxiters)"),
    Case("astropy.nddata.NDData", "astropy", "ndd",
         "import numpy as np\nfrom astropy.nddata import NDData\nndd = NDData(np.zeros(3))",
         "ndd.data[0] = 1.0", "ndd.meta['k'] = 'v'", "(ndd.data.tolist(), dict(ndd.meta))"),
    Case("ipywidgets IntSlider", "ipywidgets", "wsl", "import ipywidgets as W\nwsl = W.IntSlider(value=0)",
         "wsl.value = 100", "wsl.description = 'moved'", "(wsl.value, wsl.description)", "named"),
    Case("ipywidgets VBox", "ipywidgets", "wvb",
         "import ipywidgets as W\nwvb = W.VBox([W.Text('a')])", "wvb.children[0].value = 'b'",
         "wvb.layout.width = '50%'", "(wvb.children[0].value, wvb.layout.width)", "named"),
    Case("PIL.Image", "pillow", "img", "from PIL import Image\nimg = Image.new('L', (2, 2))",
         "img.putpixel((0, 0), 255)", "img.putpixel((1, 1), 7)", "list(img.getdata())"),
]
