// Extension-host suite for the fixture: runs inside the real extension host (code-server or VS Code)
// with the real `vscode` API. Results go to the file named by $TRENV_TEST_RESULTS (see hostSuite.ts).
'use strict';
const assert = require('node:assert/strict');
const path = require('node:path');
const vscode = require('vscode');
// The shared in-host runner, compiled by `npx tsc -p .` into out/ at the repo root.
const { runSuite } = require(path.resolve(__dirname, '../../../../out/test/e2e/hostSuite.js'));

const tests = [
  ['the fixture extension activates and registers its command', async () => {
    const ext = vscode.extensions.getExtension('trenv-test.trenv-e2e-fixture');
    assert.ok(ext, 'the fixture extension is not loaded');
    await ext.activate();
    const all = await vscode.commands.getCommands(true);
    assert.ok(all.includes('trenvFixture.hello'), 'trenvFixture.hello is not registered');
  }],
  ['executing the fixture command opens its webview', async () => {
    const result = await vscode.commands.executeCommand('trenvFixture.hello');
    assert.equal(result, 'hello-done');
    // Tab state reaches the extension host asynchronously from the workbench: poll briefly.
    const labels = () => vscode.window.tabGroups.all.flatMap((g) => g.tabs).map((t) => t.label);
    for (let i = 0; i < 50 && !labels().includes('Fixture Webview'); i++) await new Promise((r) => setTimeout(r, 100));
    const tabs = labels();
    assert.ok(tabs.includes('Fixture Webview'), `no Fixture Webview tab among ${JSON.stringify(tabs)}`);
  }],
  ['the workspace folder is open', async () => {
    assert.equal(vscode.workspace.workspaceFolders?.length, 1);
  }],
];

if (process.env.FIXTURE_SUITE_FAIL === '1') {
  tests.push(['a deliberately failing test', async () => {
    assert.equal(1 + 1, 3, 'deliberate failure');
  }]);
}

exports.run = () => runSuite(tests);
