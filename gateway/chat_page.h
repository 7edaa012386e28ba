/* The browser chat page served at GET /. */
#ifndef SLUICE_GATEWAY_CHAT_PAGE_H
#define SLUICE_GATEWAY_CHAT_PAGE_H

#include <stddef.h>

const char *gw_chat_page(size_t *len);

#endif
