/* GET /: a one-file chat page that talks to this gateway's own OpenAI API (streaming), so a
 * model can be tried from a browser with nothing else installed. No external resources. */
#include "gateway/chat_page.h"

static const char page[] =
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>sluice chat</title>\n<style>\n"
    "body{font-family:system-ui,sans-serif;max-width:52rem;margin:0 auto;padding:1rem;background:#fafafa}\n"
    "header{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap}\n"
    "#log{margin:1rem 0;display:flex;flex-direction:column;gap:.5rem}\n"
    ".m{white-space:pre-wrap;padding:.6rem .8rem;border-radius:.5rem;max-width:85%}\n"
    ".user{align-self:flex-end;background:#dbeafe}.assistant{align-self:flex-start;background:#fff;border:1px solid #ddd}\n"
    ".error{color:#b91c1c}form{display:flex;gap:.5rem}textarea{flex:1;min-height:3rem}\n"
    "</style></head><body>\n"
    "<header><strong>sluice</strong> <select id=\"model\"></select>\n"
    "<label>temperature <input id=\"temp\" type=\"number\" min=\"0\" max=\"2\" step=\"0.1\" value=\"0.7\" style=\"width:4rem\"></label>\n"
    "<label>max tokens <input id=\"max\" type=\"number\" min=\"1\" value=\"256\" style=\"width:5rem\"></label>\n"
    "<input id=\"key\" type=\"password\" placeholder=\"API key (if needed)\">\n"
    "<button id=\"clear\" type=\"button\">clear</button></header>\n"
    "<div id=\"log\"></div>\n"
    "<form id=\"f\"><textarea id=\"q\" placeholder=\"Say something (Enter sends, Shift+Enter is a new line)\"></textarea>"
    "<button>send</button></form>\n"
    "<script>\n"
    "const $=id=>document.getElementById(id);let history=[];\n"
    "$('key').value=localStorage.getItem('sluice-key')||'';\n"
    "function headers(){const h={'Content-Type':'application/json'};const k=$('key').value.trim();\n"
    " localStorage.setItem('sluice-key',k);if(k)h['Authorization']='Bearer '+k;return h}\n"
    "function add(role,text){const d=document.createElement('div');d.className='m '+role;d.textContent=text;\n"
    " $('log').appendChild(d);d.scrollIntoView();return d}\n"
    "async function models(){try{const r=await fetch('/v1/models',{headers:headers()});const j=await r.json();\n"
    " if(!r.ok)throw new Error(j.error?j.error.message:r.status);$('model').innerHTML='';\n"
    " for(const m of j.data){const o=document.createElement('option');o.textContent=m.id;$('model').appendChild(o)}}\n"
    " catch(e){add('error','models: '+e.message)}}\n"
    "async function send(text){history.push({role:'user',content:text});add('user',text);const out=add('assistant','');\n"
    " let answer='';try{const r=await fetch('/v1/chat/completions',{method:'POST',headers:headers(),body:JSON.stringify({\n"
    "  model:$('model').value,messages:history,stream:true,temperature:parseFloat($('temp').value),\n"
    "  max_tokens:parseInt($('max').value)})});\n"
    "  if(!r.ok){const j=await r.json();throw new Error(j.error?j.error.message:r.status)}\n"
    "  const rd=r.body.getReader(),dec=new TextDecoder();let buf='';\n"
    "  for(;;){const {done,value}=await rd.read();if(done)break;buf+=dec.decode(value,{stream:true});\n"
    "   let i;while((i=buf.indexOf('\\n\\n'))>=0){const ev=buf.slice(0,i);buf=buf.slice(i+2);\n"
    "    if(!ev.startsWith('data: '))continue;const data=ev.slice(6);if(data==='[DONE]')continue;\n"
    "    const j=JSON.parse(data);if(j.error)throw new Error(j.error.message);\n"
    "    for(const c of j.choices){if(c.delta&&c.delta.content){answer+=c.delta.content;out.textContent=answer}}}}\n"
    "  history.push({role:'assistant',content:answer})}\n"
    " catch(e){out.className='m error';out.textContent=answer+' ['+e.message+']';history.pop()}}\n"
    "$('f').onsubmit=e=>{e.preventDefault();const t=$('q').value.trim();if(t){$('q').value='';send(t)}};\n"
    "$('q').onkeydown=e=>{if(e.key==='Enter'&&!e.shiftKey){e.preventDefault();$('f').requestSubmit()}};\n"
    "$('clear').onclick=()=>{history=[];$('log').innerHTML=''};$('key').onchange=models;models();\n"
    "</script></body></html>\n";

const char *gw_chat_page(size_t *len)
{
    *len = sizeof page - 1;
    return page;
}
