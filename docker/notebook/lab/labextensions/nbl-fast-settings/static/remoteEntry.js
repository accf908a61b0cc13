/* A JupyterLab federated extension written by hand (no build step: the notebook image is built offline).
   It replaces @jupyterlab/apputils-extension:settings (disabled in page_config.json) with the same plugin and the
   same SettingRegistry, given a faster validator. The stock validator compiles two ajv validators for every
   plugin's schema at each page load (about 0.3 s of the browser's main thread on this machine), to check the
   user's settings and to fill in the schema's defaults. Where a plugin's user settings are empty ("{}", which is
   also what the server sends after rejecting invalid ones), there is nothing to check, and the defaults are filled
   in by walking the schema the way ajv's useDefaults does. Everything else (user settings that are not empty, a
   schema using a construct the walk does not cover) goes to JupyterLab's own validator, unchanged.
   "./verify" compares the two on every loaded plugin: tests/test_lab_start.py runs it in a real session. */
(function () {
  "use strict";
  var NAME = "nbl-fast-settings";
  var EMPTY = /^\s*\{\s*\}\s*$/;
  var REF = /^#\/definitions\/([^\/~]+)$/;
  // Keywords under which a default would be applied, or ignored, in ways this walk does not reproduce (oneOf is
  // walked in the one case it covers: see walkable).
  var OPAQUE = ["anyOf", "not", "if", "then", "else", "additionalProperties", "dependencies",
                "dependentSchemas", "additionalItems", "contains", "propertyNames", "prefixItems",
                "unevaluatedProperties", "unevaluatedItems"];
  // Root keywords that could make {} invalid.
  var ROOT_CHECKS = ["required", "minProperties", "maxProperties", "anyOf", "oneOf", "allOf", "not", "if",
                     "enum", "const", "$ref", "dependencies", "dependentRequired", "dependentSchemas"];
  var scope = null;
  var registryMade = null;

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

  function own(o, k) { return Object.prototype.hasOwnProperty.call(o, k); }
  function isObject(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }
  function copy(v) { return v === undefined ? v : JSON.parse(JSON.stringify(v)); }

  function resolve(root, ref) {
    var m = typeof ref === "string" && REF.exec(ref);
    return m && isObject(root.definitions) && own(root.definitions, m[1]) ? root.definitions[m[1]] : undefined;
  }

  /* Whether a default is reachable from s (following the schema's own references). */
  function hasDefault(s, root, seen) {
    if (Array.isArray(s)) return s.some(function (x) { return hasDefault(x, root, seen); });
    if (!isObject(s)) return false;
    if (own(s, "default")) return true;
    if (own(s, "$ref")) {
      if (seen.indexOf(s.$ref) >= 0) return false;
      var target = resolve(root, s.$ref);
      if (target === undefined || hasDefault(target, root, seen.concat([s.$ref]))) return true;
    }
    return Object.keys(s).some(function (k) { return k !== "$ref" && hasDefault(s[k], root, seen); });
  }

  /* ajv inlines a referenced schema that holds no reference itself; it compiles any other as a function of its
     own. Inside oneOf (a "composite rule") ajv ignores the defaults it inlines, but the separate function applies
     its defaults as anywhere else, and oneOf runs every branch. So a oneOf is walked when each branch either holds
     no default or is only a reference to a schema that holds a reference (JupyterLab's menu items: "submenu" is
     oneOf [{"$ref": "#/definitions/menu"}, {"type": "null"}], and a menu holds menu items). */
  function hasRef(s) {
    if (Array.isArray(s)) return s.some(hasRef);
    if (!isObject(s)) return false;
    return own(s, "$ref") || Object.keys(s).some(function (k) { return hasRef(s[k]); });
  }

  function oneOfWalkable(branches, root, seen) {
    if (!Array.isArray(branches)) return false;
    return branches.every(function (b) {
      if (!hasDefault(b, root, [])) return true;
      if (!isObject(b) || Object.keys(b).length !== 1 || !own(b, "$ref")) return false;
      var target = resolve(root, b.$ref);
      return target !== undefined && hasRef(target) && (seen.indexOf(b.$ref) >= 0 || walkable(b, root, seen));
    });
  }

  /* Whether every default in schema s sits where fill() applies it exactly as ajv would. */
  function walkable(s, root, seen) {
    if (!isObject(s)) return true;
    for (var i = 0; i < OPAQUE.length; i++) {
      if (own(s, OPAQUE[i]) && typeof s[OPAQUE[i]] === "object" && hasDefault(s[OPAQUE[i]], root, [])) return false;
    }
    if (Array.isArray(s.items) && hasDefault(s.items, root, [])) return false;
    if (own(s, "oneOf") && !oneOfWalkable(s.oneOf, root, seen)) return false;
    if (own(s, "$ref")) {
      var target = resolve(root, s.$ref);
      if (target === undefined) return false;
      if (seen.indexOf(s.$ref) < 0 && !walkable(target, root, seen.concat([s.$ref]))) return false;
    }
    var subs = [];
    ["properties", "patternProperties"].forEach(function (k) {
      if (isObject(s[k])) Object.keys(s[k]).forEach(function (p) { subs.push(s[k][p]); });
    });
    if (Array.isArray(s.allOf)) subs = subs.concat(s.allOf);
    if (isObject(s.items)) subs.push(s.items);
    return subs.every(function (sub) { return walkable(sub, root, seen); });
  }

  /* ajv's useDefaults: references and allOf first, then the object's own property defaults (a default fills a
     property that is undefined, with a copy), then each present property, pattern property and array item. */
  function fill(s, data, root, depth) {
    if (!isObject(s) || depth > 64) return;
    if (own(s, "$ref")) fill(resolve(root, s.$ref), data, root, depth + 1);
    if (Array.isArray(s.allOf)) s.allOf.forEach(function (sub) { fill(sub, data, root, depth + 1); });
    if (Array.isArray(s.oneOf)) {
      s.oneOf.forEach(function (b) { if (isObject(b) && own(b, "$ref")) fill(b, data, root, depth + 1); });
    }
    if (Array.isArray(data) && isObject(s.items)) {
      data.forEach(function (item) { fill(s.items, item, root, depth + 1); });
    }
    if (!isObject(data)) return;
    var props = isObject(s.properties) ? s.properties : {};
    Object.keys(props).forEach(function (k) {
      if (isObject(props[k]) && own(props[k], "default") && data[k] === undefined) data[k] = copy(props[k]["default"]);
    });
    Object.keys(props).forEach(function (k) { if (data[k] !== undefined) fill(props[k], data[k], root, depth + 1); });
    if (isObject(s.patternProperties)) {
      Object.keys(s.patternProperties).forEach(function (pattern) {
        var re = new RegExp(pattern, "u");
        Object.keys(data).forEach(function (k) {
          if (re.test(k)) fill(s.patternProperties[pattern], data[k], root, depth + 1);
        });
      });
    }
  }

  function FastValidator(settingregistry) {
    this._fallback = null;
    this._settingregistry = settingregistry;
    this._fits = new WeakMap();
  }
  FastValidator.prototype.fallback = function () {
    if (this._fallback === null) this._fallback = new this._settingregistry.DefaultSchemaValidator();
    return this._fallback;
  };
  /* The composite for empty user settings, or undefined where JupyterLab's own validator must decide. */
  FastValidator.prototype.composite = function (plugin) {
    var schema = plugin.schema;
    if (typeof plugin.raw !== "string" || !EMPTY.test(plugin.raw) || !isObject(schema)) return undefined;
    var fits = this._fits.get(schema);
    if (fits === undefined) {
      fits = schema.type === "object" && !ROOT_CHECKS.some(function (k) { return own(schema, k); }) &&
        walkable(schema, schema, []);
      this._fits.set(schema, fits);
    }
    if (!fits) return undefined;
    var composite = {};
    fill(schema, composite, schema, 0);
    return composite;
  };
  FastValidator.prototype.validateData = function (plugin, populate) {
    var composite = this.composite(plugin);
    if (composite === undefined) return this.fallback().validateData(plugin, populate);
    if (populate !== false) plugin.data = { composite: composite, user: {} };
    return null;
  };

  function plugin(coreutils, settingregistry) {
    return {
      id: NAME + ":settings",
      description: "Provides the setting registry; empty user settings are not run through a compiled validator.",
      autoStart: true,
      provides: settingregistry.ISettingRegistry,
      requires: [settingregistry.ISettingConnector],
      activate: function (app, connector) {
        var isDisabled = coreutils.PageConfig.Extension.isDisabled;
        return connector.list("active").then(function (list) {
          var registry = new settingregistry.SettingRegistry({
            connector: connector,
            plugins: list.values.filter(function (p) { return app.hasPlugin(p.id); }),
            validator: new FastValidator(settingregistry)
          });
          registryMade = registry;
          void app.restored.then(function () {
            return connector.list("ids").then(function (all) {
              all.ids.forEach(function (id) {
                if (!app.hasPlugin(id) || isDisabled(id) || id in registry.plugins) return;
                registry.load(id).catch(function (reason) {
                  console.warn("Settings failed to load for (" + id + ")", reason);
                  if (!app.isPluginActivated(id)) {
                    console.warn("If 'jupyter.lab.transform=true' in the plugin schema, this may happen if " +
                      "{autoStart: false} in (" + id + ") or if it is one of the deferredExtensions in page config.");
                  }
                });
              });
            });
          });
          return registry;
        });
      }
    };
  }

  /* The check behind "./verify", for tests: (1) for every plugin the registry holds, the composite ajv makes from
     its schema with empty user settings against this walk's; (2) a second registry with JupyterLab's own validator,
     given the same plugins and transforms, against the one in use: every plugin's composite and user settings. */
  function verify(settingregistry, lumino) {
    return function () {
      var registry = registryMade;
      if (registry === null) return Promise.reject(new Error(NAME + ": no registry yet"));
      var report = { plugins: 0, walked: 0, fallback: [], mismatched: [], compared: 0, differ: [] };
      var ids;
      return registry.ready.then(function () {
        var fast = new FastValidator(settingregistry);
        ids = Object.keys(registry.plugins);
        ids.forEach(function (id) {
          var schema = registry.plugins[id].schema;
          var probe = { id: id, raw: "{}", schema: copy(schema), data: null };
          var errors = new settingregistry.DefaultSchemaValidator().validateData(probe, true);
          var ours = fast.composite({ id: id, raw: "{}", schema: copy(schema) });
          report.plugins += 1;
          if (ours === undefined) { report.fallback.push(id); return; }
          report.walked += 1;
          if (errors || !lumino.JSONExt.deepEqual(ours, probe.data.composite)) report.mismatched.push(id);
        });
        return registry.connector.list("active");
      }).then(function (list) {
        var stock = new settingregistry.SettingRegistry({
          connector: registry.connector,
          plugins: list.values.filter(function (p) { return ids.indexOf(p.id) >= 0; })
        });
        var transforms = registry._transformers || {};
        Object.keys(transforms).forEach(function (id) { stock.transform(id, transforms[id]); });
        return stock.ready.then(function () {
          return Promise.all(ids.map(function (id) {
            return stock.load(id).then(function () {
              var a = registry.plugins[id].data, b = stock.plugins[id].data;
              report.compared += 1;
              if (!lumino.JSONExt.deepEqual(a.composite, b.composite) || !lumino.JSONExt.deepEqual(a.user, b.user)) {
                report.differ.push(id);
              }
            }, function (reason) { report.differ.push(id + ": " + reason); });
          }));
        });
      }).then(function () { return report; });
    };
  }

  var container = {
    init: function (shareScope) { scope = shareScope; },
    get: function (module) {
      if (module === "./extension") {
        return Promise.all([
          shared("@jupyterlab/coreutils"), shared("@jupyterlab/settingregistry")
        ]).then(function (m) {
          var exported = { __esModule: true, default: [plugin.apply(null, m)] };
          return function () { return exported; };
        });
      }
      if (module === "./verify") {
        return Promise.all([shared("@jupyterlab/settingregistry"), shared("@lumino/coreutils")]).then(function (m) {
          var exported = { __esModule: true, default: verify.apply(null, m) };
          return function () { return exported; };
        });
      }
      return Promise.reject(new Error(NAME + ": no module " + module));
    }
  };
  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = container;
})();
