// ICT-HP nodes: show the text a node returns as `ui.text` (score table, best-of-N summary, LoRA metadata)
// in a read-only box on the node. The box is not saved with the workflow.
import { app } from "../../scripts/app.js";

const NODES = new Set([
  "ICTHPScore",
  "ICTHPBestOfN",
  "ICTHPLoraLoader",
  "ICTHPEarlyBestOfN",
  "ICTHPSelect",
  "ICTHPModelManager",
  "ICTHPExplain",
]);
const WIDGET = "icthp_result";

function showText(node, text) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) {
    const box = document.createElement("textarea");
    box.readOnly = true;
    box.style.cssText = "width:100%;font-family:monospace;font-size:11px;white-space:pre;resize:none;";
    widget = node.addDOMWidget(WIDGET, "icthp_text", box, {
      serialize: false,
      getValue: () => box.value,
      setValue: (v) => {
        box.value = v;
      },
    });
    widget.serialize = false; // not part of widgets_values (workflow files) nor of the API prompt
    widget.icthpBox = box;
  }
  widget.icthpBox.value = text;
  node.setDirtyCanvas?.(true, true);
}

app.registerExtension({
  name: "ICTHP.ResultText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text) showText(this, [].concat(message.text).join("\n"));
    };
  },
});
