/* A JupyterLab federated extension written by hand (no build step: the notebook image is built offline).
   It replaces @jupyterlab/apputils-extension:state (disabled in page_config.json) with the same plugin,
   except that loading the workspace does not wait for the workspace's first save: JupyterLab 4 debounces that
   save by 500 ms, and every state change during the start restarts the wait, so the start sat idle about 1 s.
   The save still happens, in the background. Modules come from JupyterLab's own share scope, so the tokens are
   JupyterLab's own objects. */
(function () {
  "use strict";
  var NAME = "nbl-fast-state";
  var scope = null;

  function newest(versions) {
    return Object.keys(versions).sort(function (a, b) {
      var x = a.split(/[.+-]/).map(Number), y = b.split(/[.+-]/).map(Number);
      for (var i = 0; i < Math.max(x.length, y.length); i++) {
        if ((x[i] || 0) !== (y[i] || 0)) return (x[i] || 0) - (y[i] || 0);
      }
      return 0;
    }).pop();
  }

  function shared(pkg) {
    var versions = scope && scope[pkg];
    if (!versions) return Promise.reject(new Error(NAME + ": " + pkg + " is not shared"));
    return Promise.resolve(versions[newest(versions)].get()).then(function (factory) { return factory(); });
  }

  function plugin(app, appext, statedb, polling, coreutils, luminoCore, translation, docregistry) {
    var CMD = { loadState: "apputils:load-statedb", reset: "apputils:reset", resetOnLoad: "apputils:reset-on-load" };
    var RESET = /(\?reset|&reset)(=[^&#]*)?($|&|#)/;

    function updateTitle(workspace, db, name, current) {
      return db.toJSON().then(function (data) {
        var layout = data["layout-restorer:data"];
        var main = layout && layout.main && layout.main.current;
        var PathExt = coreutils.PathExt, PageConfig = coreutils.PageConfig;
        if (main !== undefined && (main.indexOf("notebook") === 0 || main.indexOf("editor") === 0)) {
          var file = current instanceof docregistry.DocumentWidget
            ? PathExt.basename(current.context.path)
            : PathExt.basename(decodeURIComponent(window.location.href));
          file = file.length > 15 ? file.slice(0, 12).concat("\u2026") : file;
          var ws = workspace.length > 15 ? workspace.slice(0, 12).concat("\u2026") : workspace;
          var count = Object.keys(data).filter(function (k) { return k.indexOf("notebook") === 0 || k.indexOf("editor") === 0; }).length;
          document.title = file + (count > 1 ? " (" + count + ")" : "") + " - " + (workspace === "default" ? name : ws);
        } else {
          document.title = (PageConfig.getOption("appName") || "JupyterLab") + (workspace === "default" ? "" : " (" + workspace + ")");
        }
      });
    }

    return {
      id: NAME + ":state",
      description: "Provides the application state, stored per workspace; the start does not wait for its first save.",
      autoStart: true,
      provides: statedb.IStateDB,
      requires: [appext.JupyterFrontEnd.IPaths, appext.IRouter, translation.ITranslator],
      optional: [app.IWindowResolver],
      activate: function (lab, paths, router, translator, resolver) {
        var trans = translator.load("jupyterlab");
        if (resolver === null) return new statedb.StateDB();
        var resolved = false;
        var commands = lab.commands, name = lab.name, workspaces = lab.serviceManager.workspaces;
        var workspace = resolver.name;
        var transform = new luminoCore.PromiseDelegate();
        var db = new statedb.StateDB({ transform: transform.promise });
        var save = new polling.Debouncer(function () {
          return db.toJSON().then(function (data) {
            return workspaces.save(workspace, { data: data, metadata: { id: workspace } });
          });
        });
        db.changed.connect(function () { void save.invoke(); }, db);
        db.changed.connect(function () {
          void updateTitle(workspace, db, name, lab.shell.currentWidget || undefined);
        });

        commands.addCommand(CMD.loadState, {
          label: trans.__("Load state for the current workspace."),
          execute: function (args) {
            if (resolved) return;
            var query = coreutils.URLExt.queryStringToObject(args.search || "");
            var clone = typeof query.clone === "string"
              ? (query.clone === "" ? coreutils.PageConfig.defaultWorkspace : query.clone) : null;
            var source = clone || workspace || null;
            if (source === null) { console.error(CMD.loadState + " cannot load null workspace."); return; }
            return workspaces.fetch(source).then(function (saved) {
              if (!resolved) { resolved = true; transform.resolve({ type: "overwrite", contents: saved.data }); }
            }, function (error) {
              console.warn('Fetching workspace "' + workspace + '" failed.', error && error.message);
              if (!resolved) { resolved = true; transform.resolve({ type: "cancel", contents: null }); }
            }).then(function () {
              if (source === clone) {
                delete query.clone;
                var url = args.path + coreutils.URLExt.objectToQueryString(query) + args.hash;
                var cloned = save.invoke().then(function () { return router.stop; });
                cloned.then(function () { router.navigate(url); });
                return cloned;
              }
              void save.invoke(); // saved in the background: the start goes on
            });
          }
        });
        commands.addCommand(CMD.reset, {
          label: trans.__("Reset Application State"),
          execute: function (args) {
            return db.clear().then(function () { return save.invoke(); }).then(function () {
              if (args.reload) router.reload();
            });
          }
        });
        commands.addCommand(CMD.resetOnLoad, {
          label: trans.__("Reset state when loading for the workspace."),
          execute: function (args) {
            var query = coreutils.URLExt.queryStringToObject(args.search || "");
            var reset = "reset" in query, clone = "clone" in query;
            if (!reset) return;
            if (resolved) return router.reload();
            resolved = true;
            transform.resolve({ type: "clear", contents: null });
            delete query.reset;
            var url = args.path + coreutils.URLExt.objectToQueryString(query) + args.hash;
            var cleared = db.clear().then(function () { return save.invoke(); });
            cleared.then(function () { router.navigate(url, clone ? { hard: true } : undefined); });
            return cleared;
          }
        });
        router.register({ command: CMD.loadState, pattern: /.?/, rank: 30 });
        router.register({ command: CMD.resetOnLoad, pattern: RESET, rank: 20 });
        return db;
      }
    };
  }

  var container = {
    init: function (shareScope) { scope = shareScope; },
    get: function (module) {
      if (module !== "./extension") return Promise.reject(new Error(NAME + ": no module " + module));
      return Promise.all([
        shared("@jupyterlab/apputils"), shared("@jupyterlab/application"), shared("@jupyterlab/statedb"),
        shared("@lumino/polling"), shared("@jupyterlab/coreutils"), shared("@lumino/coreutils"),
        shared("@jupyterlab/translation"), shared("@jupyterlab/docregistry")
      ]).then(function (m) {
        var exported = { __esModule: true, default: [plugin.apply(null, m)] };
        return function () { return exported; };
      });
    }
  };
  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = container;
})();
