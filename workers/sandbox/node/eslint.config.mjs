// ESLint 9 flat config for linting one untrusted JavaScript/JSX snippet read from stdin.
//
// Recommended rules only. The file must live next to the node_modules it imports (the
// sandbox binds that directory read-only), and the snippet's --stdin-filename must lie
// under this directory or ESLint ignores it. TypeScript has its own config
// (eslint.ts.config.mjs) because loading typescript-eslint costs ~0.5 s per run.
import js from "@eslint/js";
import globals from "globals";

export const jsFiles = ["**/*.js", "**/*.mjs", "**/*.cjs", "**/*.jsx"];
export const tsFiles = ["**/*.ts", "**/*.tsx", "**/*.mts", "**/*.cts"];

// ESLint's scope analysis does not count <Foo /> as a use of Foo, so a component used
// only in JSX would be "unused". These two rules do what eslint-plugin-react's rules
// of the same names do, without its ~0.4 s of start-up.
const jsx = {
  rules: {
    "jsx-uses-vars": {
      meta: { type: "problem", schema: [] },
      create(context) {
        return {
          JSXOpeningElement(node) {
            let name = node.name;
            while (name.type === "JSXMemberExpression") name = name.object;
            if (name.type === "JSXIdentifier" && !/^[a-z]/.test(name.name)) {
              context.sourceCode.markVariableAsUsed(name.name, node);
            }
          },
        };
      },
    },
    "jsx-uses-react": {
      meta: { type: "problem", schema: [] },
      create(context) {
        const use = (node) => context.sourceCode.markVariableAsUsed("React", node);
        return { JSXOpeningElement: use, JSXOpeningFragment: use };
      },
    },
  },
};

export const base = [
  {
    files: [...jsFiles, ...tsFiles],
    ...js.configs.recommended,
    languageOptions: {
      ecmaVersion: "latest",
      sourceType: "module",
      globals: { ...globals.node, ...globals.browser },
      // JSX in .js too: Vite projects often put it there.
      parserOptions: { ecmaFeatures: { jsx: true } },
    },
  },
  {
    files: ["**/*.js", "**/*.jsx", "**/*.tsx"],
    plugins: { jsx },
    rules: { "jsx/jsx-uses-vars": "error", "jsx/jsx-uses-react": "error" },
  },
];

export default base;
